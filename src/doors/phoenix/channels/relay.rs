//! `relay` — the device relay over Phoenix (spec §1, seed: device relay server).
//!
//! Joining registers the socket's `name` (lower-cased) in the shared relay directory, the
//! same one the raw `/relay` door uses, so packets flow between doors in both directions.
//! Registration follows the directory's one rule ([`crate::services::relay::register`]): reserved names,
//! case, `"force": true` takeover. Leaving or disconnecting unregisters it.

use super::{ChannelError, Ctx, Reply, decode_json, ok};
use crate::core::directory::{self, BinaryPacket, Claim, DeviceInfo, Packet};
use crate::core::message::{empty_json, to_json};
use crate::doors::phoenix::Payload;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest `description`, `version` or `interface` accepted.
pub const MAX_META_LEN: usize = 256;

/// State of a joined `relay` channel: the name this socket is registered under, while
/// registered.
#[derive(Debug)]
pub struct RelayChannel {
    pub name: String,
    pub registered: bool,
}

/// Registration metadata (join params, `register` body).
#[derive(Debug, Default, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub device_name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub interface: Option<String>,
    /// Take the name over from the connection that holds it (on either door).
    #[serde(default)]
    pub force: bool,
}

impl Meta {
    /// The metadata, its lengths checked (the seed's fields are short texts).
    pub fn info(&self) -> Result<DeviceInfo, String> {
        for (field, v) in [
            ("description", &self.description),
            ("version", &self.version),
            ("interface", &self.interface),
        ] {
            if v.as_ref().is_some_and(|v| v.len() > MAX_META_LEN) {
                return Err(format!("{field} longer than {MAX_META_LEN} bytes"));
            }
        }
        Ok(DeviceInfo {
            description: self.description.clone(),
            version: self.version.clone(),
            interface: self.interface.clone(),
        })
    }
}

/// Events a device may push on `relay`, decoded once.
#[derive(Debug)]
pub enum RelayIn {
    GetDevices,
    GetDeviceInfo {
        device_name: String,
    },
    Send {
        target: String,
        payload: Box<RawValue>,
    },
    /// A V2 binary push with event `send:<target>`: the bytes go to the target as a binary
    /// push with event `packet:<sender>`.
    SendBinary {
        target: String,
        bytes: bytes::Bytes,
    },
    Register(Meta),
    Unregister,
}

#[derive(Deserialize)]
struct InfoBody {
    device_name: String,
}

#[derive(Deserialize)]
struct SendBody {
    target: String,
    payload: Box<RawValue>,
}

impl RelayIn {
    /// `max_packet`: a `send` whose JSON is this many characters or more is refused.
    pub fn decode(
        event: &str,
        payload: &Payload,
        max_packet: usize,
    ) -> Result<RelayIn, ChannelError> {
        if let (Some(target), Payload::Binary(bytes)) = (event.strip_prefix("send:"), payload) {
            if bytes.len() >= max_packet {
                return Err(ChannelError::refused("packet too large"));
            }
            return Ok(RelayIn::SendBinary {
                target: target.to_owned(),
                bytes: bytes.clone(),
            });
        }
        match event {
            "get_devices" => Ok(RelayIn::GetDevices),
            "get_device_info" => {
                let b: InfoBody =
                    decode_json(payload, "get_device_info needs {\"device_name\": string}")?;
                Ok(RelayIn::GetDeviceInfo {
                    device_name: b.device_name,
                })
            }
            "send" => {
                let raw = payload
                    .json()
                    .ok_or_else(|| ChannelError::refused("send needs a JSON payload"))?;
                if raw.get().chars().count() >= max_packet {
                    return Err(ChannelError::refused("packet too large"));
                }
                let b: SendBody =
                    decode_json(payload, "send needs {\"target\": string, \"payload\": any}")?;
                Ok(RelayIn::Send {
                    target: b.target,
                    payload: b.payload,
                })
            }
            "register" => Ok(RelayIn::Register(decode_json(
                payload,
                "register needs an object",
            )?)),
            "unregister" => Ok(RelayIn::Unregister),
            _ => Err(ChannelError::UnknownEvent),
        }
    }
}

/// Join: register the socket's name with the join params as metadata (and `force`).
pub async fn join(
    payload: &Payload,
    ctx: &Ctx<'_>,
) -> Result<(RelayChannel, Box<RawValue>), ChannelError> {
    let meta: Meta = match payload.json().map(|r| r.get().trim()) {
        None | Some("null") => Meta::default(),
        Some(_) => decode_json(payload, "relay join params must be an object")?,
    };
    let name = register(&meta, ctx).await?;
    Ok((
        RelayChannel {
            name,
            registered: true,
        },
        empty_json(),
    ))
}

/// Registers the socket's name by the directory's rule; `Ok` is the relay name.
async fn register(meta: &Meta, ctx: &Ctx<'_>) -> Result<String, ChannelError> {
    let info = meta.info().map_err(ChannelError::refused)?;
    let claim = Claim {
        name: ctx.conn.name.as_str(),
        info,
        force: meta.force,
        // Phoenix's connect already bound the socket's name to its token's device.
        token_device: None,
    };
    ctx.relay
        .register(ctx.conn, claim)
        .await
        .map_err(|e| ChannelError::refused(e.to_string()))
}

pub async fn handle_in(ch: &mut RelayChannel, event: RelayIn, ctx: &Ctx<'_>) -> Reply {
    let relay = ctx.relay;
    match event {
        RelayIn::GetDevices => {
            #[derive(serde::Serialize)]
            struct Devices {
                devices: Vec<String>,
            }
            let devices = relay
                .names()
                .await
                .map_err(|e| ChannelError::refused(e.to_string()))?;
            Ok(to_json(&Devices { devices }))
        }
        RelayIn::GetDeviceInfo { device_name } => {
            let info = relay
                .info(&device_name)
                .await
                .map_err(|e| ChannelError::refused(e.to_string()))?
                .ok_or_else(|| ChannelError::refused("unknown device"))?;
            Ok(to_json(&info_reply(
                &directory::normalize(&device_name),
                &info,
            )))
        }
        RelayIn::Send { target, payload } => {
            if !ch.registered {
                return Err(ChannelError::refused("not registered"));
            }
            let packet = Packet {
                sender: ch.name.clone(),
                payload,
            };
            relay
                .send(ctx.conn, &target, std::sync::Arc::new(packet))
                .await
                .map_err(|e| ChannelError::refused(e.to_string()))?;
            ok()
        }
        RelayIn::SendBinary { target, bytes } => {
            if !ch.registered {
                return Err(ChannelError::refused("not registered"));
            }
            let packet = BinaryPacket {
                sender: ch.name.clone(),
                bytes,
            };
            relay
                .send_binary(ctx.conn, &target, std::sync::Arc::new(packet))
                .await
                .map_err(|e| ChannelError::refused(e.to_string()))?;
            ok()
        }
        RelayIn::Register(meta) => {
            if meta
                .device_name
                .as_deref()
                .is_some_and(|n| directory::normalize(n) != ch.name)
            {
                return Err(ChannelError::refused("a device may only register itself"));
            }
            register(&meta, ctx).await?;
            ch.registered = true;
            ok()
        }
        RelayIn::Unregister => {
            terminate(ch, ctx);
            ch.registered = false;
            ok()
        }
    }
}

/// The `get_device_info` answer.
#[derive(Debug, serde::Serialize)]
pub struct InfoReply<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub version: Option<&'a str>,
    pub interface: Option<&'a str>,
}

/// The `get_device_info` answer for `name`, as a value (the raw `/relay` door wraps it).
pub fn info_json(name: &str, info: &DeviceInfo) -> serde_json::Value {
    serde_json::to_value(info_reply(name, info)).unwrap_or_default()
}

/// The `get_device_info` answer for `name`.
pub fn info_reply<'a>(name: &'a str, info: &'a DeviceInfo) -> InfoReply<'a> {
    InfoReply {
        name,
        description: info.description.as_deref(),
        version: info.version.as_deref(),
        interface: info.interface.as_deref(),
    }
}

/// Leaving (or disconnecting) unregisters the device.
pub fn terminate(ch: &RelayChannel, ctx: &Ctx<'_>) {
    if ch.registered {
        ctx.relay.unregister(&ch.name, ctx.conn);
    }
}
