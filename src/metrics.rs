//! Counters exposed at `GET /metrics` in the Prometheus text format (spec §6).
//!
//! Plain atomics: incrementing one is a single relaxed add on the hot path, and the
//! exposition is a dozen lines, so no metrics framework is pulled in.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub joins: AtomicU64,
    pub joins_refused: AtomicU64,
    pub decode_errors: AtomicU64,
    pub broadcasts: AtomicU64,
    pub slow_consumers_closed: AtomicU64,
    /// Bester connections closed at accept: their address had `max_conns_per_ip`.
    pub bester_connections_refused: AtomicU64,
    /// Bester logins refused: wrong username or password.
    pub bester_logins_failed: AtomicU64,
    /// Bester logins refused without hashing: too many recent failures.
    pub bester_logins_throttled: AtomicU64,
    /// Bester logins (and password changes) refused: no hashing slot in time.
    pub bester_logins_busy: AtomicU64,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    /// The Prometheus text exposition; `by_door` (live connections of each door, from the
    /// registry) gives the connection gauges. `known_lock_joins`: lock joins answered from
    /// the store's copy of known locks ([`crate::store::Store::lock_join_known_hits`]).
    pub fn render(
        &self,
        by_door: &[(crate::domain::Door, usize)],
        known_lock_joins: u64,
    ) -> String {
        let connections: usize = by_door.iter().map(|(_, n)| n).sum();
        let bester_connections: usize = by_door
            .iter()
            .filter(|(d, _)| *d == crate::domain::Door::Bester)
            .map(|(_, n)| n)
            .sum();
        let counters: [(&str, &str, u64); 14] = [
            (
                "homehub_connections_total",
                "connections accepted (every door)",
                self.connections_total.load(Ordering::Relaxed),
            ),
            (
                "homehub_connections_refused_total",
                "connection attempts refused before the upgrade",
                self.connections_refused.load(Ordering::Relaxed),
            ),
            (
                "homehub_frames_in_total",
                "frames received from clients",
                self.frames_in.load(Ordering::Relaxed),
            ),
            (
                "homehub_frames_out_total",
                "frames written to clients",
                self.frames_out.load(Ordering::Relaxed),
            ),
            (
                "homehub_joins_total",
                "successful channel joins",
                self.joins.load(Ordering::Relaxed),
            ),
            (
                "homehub_joins_refused_total",
                "refused channel joins",
                self.joins_refused.load(Ordering::Relaxed),
            ),
            (
                "homehub_decode_errors_total",
                "client frames that could not be decoded",
                self.decode_errors.load(Ordering::Relaxed),
            ),
            (
                "homehub_broadcasts_total",
                "broadcasts fanned out",
                self.broadcasts.load(Ordering::Relaxed),
            ),
            (
                "homehub_slow_consumers_closed_total",
                "connections closed because they did not read",
                self.slow_consumers_closed.load(Ordering::Relaxed),
            ),
            (
                "homehub_lock_joins_known_total",
                "lock joins of known locks answered from the store's copy",
                known_lock_joins,
            ),
            (
                "homehub_bester_connections_refused_total",
                "Bester connections refused at accept: too many from their address",
                self.bester_connections_refused.load(Ordering::Relaxed),
            ),
            (
                "homehub_bester_logins_failed_total",
                "Bester logins refused: wrong username or password",
                self.bester_logins_failed.load(Ordering::Relaxed),
            ),
            (
                "homehub_bester_logins_throttled_total",
                "Bester logins refused without hashing after too many failures",
                self.bester_logins_throttled.load(Ordering::Relaxed),
            ),
            (
                "homehub_bester_logins_busy_total",
                "Bester logins and password changes refused: no hashing slot in time",
                self.bester_logins_busy.load(Ordering::Relaxed),
            ),
        ];
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP homehub_connections live connections (every door)"
        );
        let _ = writeln!(out, "# TYPE homehub_connections gauge");
        let _ = writeln!(out, "homehub_connections {connections}");
        let _ = writeln!(
            out,
            "# HELP homehub_bester_connections live Bester connections (TCP and Unix socket)"
        );
        let _ = writeln!(out, "# TYPE homehub_bester_connections gauge");
        let _ = writeln!(out, "homehub_bester_connections {bester_connections}");
        let _ = writeln!(
            out,
            "# HELP homehub_door_connections live connections of each door"
        );
        let _ = writeln!(out, "# TYPE homehub_door_connections gauge");
        for (door, n) in by_door {
            let _ = writeln!(
                out,
                "homehub_door_connections{{door=\"{}\"}} {n}",
                door.as_str()
            );
        }
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}
