//! `homehub db copy` (being written).
