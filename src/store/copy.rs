//! `homehub db copy`: moves a home's data from one store to another (being written).
