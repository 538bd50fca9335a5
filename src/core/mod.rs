//! The core: the door-agnostic runtime every door stands on. It owns every live connection
//! of every door ([`registry::Registry`], [`registry::Conn`]), the one bounded outbound
//! queue type ([`outbox`]), topic subscriptions, the addressable names (relay devices in
//! [`directory`], Compendium addresses in [`addresses`], Bester users in [`users`]) and
//! Presence ([`presence`]). It knows no protocol: doors encode what it delivers
//! ([`message`]) their own way. Whatever crosses connections goes through
//! [`fabric::Fabric`], the seam a cluster plugs into.

pub mod addresses;
pub mod close_code;
pub mod directory;
pub mod fabric;
pub mod interest;
pub mod message;
pub mod outbox;
pub mod presence;
pub mod registry;
#[cfg(test)]
mod registry_tests;
pub mod topic;
pub mod users;

pub use crate::domain::Door;
pub use fabric::{ClusterView, DeliveryError, Fabric, LocalFabric, NodeView};
pub use registry::{Conn, DeviceView, Outbound, Registry, SendError};
pub use topic::Topic;
