//! Latency histograms, counters shared by every connection task, and the clock.
//!
//! The generator runs on one thread (a current-thread runtime with a `LocalSet`), so the
//! shared state is plain `Cell`/`RefCell`: no atomics or locks on the hot path.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The shared epoch: every timestamp in payloads is nanoseconds since it.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// A latency histogram in nanoseconds (1 µs .. 10 min, 3 significant digits).
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid bounds"))
    }
}

impl Hist {
    pub fn record(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }

    pub fn summary(&self) -> Lat {
        let h = &self.0;
        if h.is_empty() {
            return Lat::default();
        }
        let ms = |v: u64| round3(v as f64 / 1e6);
        Lat {
            count: h.len(),
            mean_ms: round3(h.mean() / 1e6),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Lat {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Counters, reset per measured phase except `open` (a gauge).
#[derive(Default)]
pub struct Counters {
    /// Connections currently open (connected and joined).
    pub open: Cell<u64>,
    /// Successful connect + join sequences.
    pub established: Cell<u64>,
    /// Failed connect/upgrade/join attempts.
    pub connect_failed: Cell<u64>,
    /// Messages written by connection tasks (relay `send`, lock `event`).
    pub sent: Cell<u64>,
    /// Messages delivered to receivers (relay `packet`, `events` `event`).
    pub recv: Cell<u64>,
    pub replies_ok: Cell<u64>,
    pub replies_err: Cell<u64>,
    /// Connections that ended without being asked to (hub close, EOF, error).
    pub closes: Cell<u64>,
    pub heartbeats: Cell<u64>,
    pub heartbeat_timeouts: Cell<u64>,
    /// Time of the latest delivery (ns since the epoch).
    pub last_recv_ns: Cell<u64>,
}

impl Counters {
    pub fn reset_phase(&self) {
        for c in [
            &self.established,
            &self.connect_failed,
            &self.sent,
            &self.recv,
            &self.replies_ok,
            &self.replies_err,
            &self.closes,
            &self.heartbeats,
            &self.heartbeat_timeouts,
            &self.last_recv_ns,
        ] {
            c.set(0);
        }
    }
}

pub fn inc(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

pub fn dec(c: &Cell<u64>) {
    c.set(c.get().saturating_sub(1));
}

/// Deliveries of one broadcast event (S5), indexed by its sequence number.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventRec {
    pub sent_ns: u64,
    pub count: u32,
    pub first_ns: u64,
    pub last_ns: u64,
}

/// Everything connection tasks report into.
#[derive(Default)]
pub struct Shared {
    pub c: Counters,
    /// Delivery latency of the current phase: intended send time → receipt.
    pub lat: RefCell<Hist>,
    /// Delivery latency of messages sent in the first quarter of a step (before any
    /// backlog could build up): the reference for "kept pace".
    pub lat_early: RefCell<Hist>,
    /// Messages intended before this time (ns since the epoch) count as early.
    pub early_until_ns: Cell<u64>,
    /// Join latency of the current phase: (intended) connect start → join reply.
    pub join_lat: RefCell<Hist>,
    /// Send lag of the current phase: intended send time → actual write.
    pub lag: RefCell<Hist>,
    /// Failure reasons with counts (connect errors, error replies, closes).
    pub errors: RefCell<BTreeMap<String, u64>>,
    /// Broadcast deliveries per event sequence number.
    pub events: RefCell<Vec<EventRec>>,
    /// Per connection index: time and UUID of its latest lock join (S6).
    pub lock_joins: RefCell<Vec<Option<(u64, String)>>>,
    pub record_lock_joins: Cell<bool>,
    /// Stalled connections (S5b) found closed by the hub, by close code.
    pub stalled_closed: RefCell<BTreeMap<String, u64>>,
    /// (Re)connect attempts that failed while reconnecting (S6/S7).
    pub reconnect_failures: Cell<u64>,
}

impl Shared {
    /// Records one delivery of a message intended at `t`.
    pub fn delivery(&self, t: u64, now: u64) {
        let d = now.saturating_sub(t);
        self.lat.borrow_mut().record(d);
        if t < self.early_until_ns.get() {
            self.lat_early.borrow_mut().record(d);
        }
    }

    pub fn reset_phase(&self) {
        self.c.reset_phase();
        self.lat.borrow_mut().reset();
        self.lat_early.borrow_mut().reset();
        self.early_until_ns.set(0);
        self.join_lat.borrow_mut().reset();
        self.lag.borrow_mut().reset();
        self.errors.borrow_mut().clear();
        self.stalled_closed.borrow_mut().clear();
        self.reconnect_failures.set(0);
    }

    pub fn error(&self, what: impl Into<String>) {
        *self.errors.borrow_mut().entry(what.into()).or_default() += 1;
    }

    pub fn errors_snapshot(&self) -> BTreeMap<String, u64> {
        self.errors.borrow().clone()
    }

    /// Records one broadcast delivery of event `seq` sent at `sent_ns`.
    pub fn event_delivered(&self, seq: u64, sent_ns: u64, now: u64) {
        let mut ev = self.events.borrow_mut();
        let i = seq as usize;
        if ev.len() <= i {
            ev.resize(i + 1, EventRec::default());
        }
        let r = &mut ev[i];
        if r.count == 0 {
            r.first_ns = now;
            r.sent_ns = sent_ns;
        }
        r.count += 1;
        r.last_ns = r.last_ns.max(now);
    }
}
