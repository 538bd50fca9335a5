//! The scenarios of issue 4 (S1–S7), issue 12's login flood (S8), issue 15's cluster (S9),
//! and what they share: device specs, the rate ladder
//! that finds a maximum sustained rate, and number formatting.

pub mod broadcast;
pub mod cluster;
pub mod flood;
pub mod idle;
pub mod joins;
pub mod relay;
pub mod restart;

use std::rc::Rc;

use serde::Serialize;

use crate::ctx::{Ctx, Usage};
use crate::session::{Role, Spec};
use crate::stats::Lat;

/// Every scenario id, in run order.
pub const ALL: [&str; 10] = ["S1", "S2", "S3", "S4", "S5", "S5b", "S6", "S7", "S8", "S9"];

/// A device joined to `lock:<serial>` that only heartbeats.
pub fn lock_spec(ctx: &Ctx, name_tag: &str, serial_tag: &str, i: usize) -> Spec {
    Spec {
        idx: i,
        name: ctx.name(name_tag, i),
        topics: vec![format!("lock:{}", ctx.serial(serial_tag, i))],
        role: Role::Idle,
        reconnect: false,
        rcvbuf: None,
        intended_ns: None,
        stop: ctx.stop_rx(),
        target: None,
    }
}

/// One step of a rate ladder (or a fixed-rate run).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Offered rate (messages or deliveries per second).
    pub rate: f64,
    pub secs: f64,
    /// Messages the schedule dispatched.
    pub scheduled: u64,
    /// Deliveries expected and received.
    pub expected: u64,
    pub delivered: u64,
    pub replies_ok: u64,
    pub replies_err: u64,
    pub closes: u64,
    /// Deliveries per second from the first intended send to the last delivery.
    pub achieved: f64,
    /// How long after the schedule ended the last delivery arrived.
    pub drain_ms: f64,
    pub latency: Lat,
    /// Latency of the messages sent in the first quarter of the step.
    pub latency_first_quarter: Lat,
    /// Generator send lag (intended send time → write), p99.
    pub send_lag_p99_ms: f64,
    pub usage: Usage,
    pub pass: bool,
    pub why: String,
    /// The generator's core was saturated: the hub may be faster than measured.
    pub generator_bound: bool,
}

impl Step {
    /// Judges a step: everything delivered, no error, no close, and the backlog drained
    /// promptly: the last delivery came at most max(100 ms, 10 % of the step) after the
    /// schedule ended. A hub more than ~10 % slower than the offered rate builds a backlog
    /// that grows with the step and fails this.
    pub fn judge(&mut self) {
        let allowed_drain = (self.secs * 1000.0 * 0.10).max(100.0);
        let mut why = Vec::new();
        if self.delivered < self.expected {
            why.push(format!("lost {}", self.expected - self.delivered));
        }
        if self.replies_err > 0 {
            why.push(format!("{} error replies", self.replies_err));
        }
        if self.closes > 0 {
            why.push(format!("{} connections closed", self.closes));
        }
        if self.replies_ok + self.replies_err < self.scheduled {
            why.push(format!(
                "{} sends unanswered",
                self.scheduled - self.replies_ok - self.replies_err
            ));
        }
        if self.drain_ms > allowed_drain {
            why.push(format!(
                "fell behind (last delivery {:.0} ms after the schedule ended)",
                self.drain_ms
            ));
        }
        self.generator_bound = self.usage.gen_cpu_pct >= 90.0 || self.send_lag_p99_ms > 5.0;
        self.pass = why.is_empty();
        self.why = why.join(", ");
    }
}

/// The timing of one open-loop step: starts 2 ms from now, runs `secs`, and marks its first
/// quarter for `latency_first_quarter`.
pub struct Window {
    pub rate: f64,
    pub secs: f64,
    pub start: u64,
    pub end: u64,
}

impl Window {
    pub fn open(ctx: &Ctx, rate: f64, secs: f64) -> Window {
        let start = crate::stats::now_ns() + 2_000_000;
        ctx.sh.early_until_ns.set(start + (secs * 0.25e9) as u64);
        Window {
            rate,
            secs,
            start,
            end: start + (secs * 1e9) as u64,
        }
    }

    /// Waits until `done` (every delivery and reply of the step arrived), at most 2 s plus
    /// half the step.
    pub async fn drain(&self, done: impl Fn() -> bool) {
        let max = crate::stats::now_ns() + 2_000_000_000 + (self.secs * 0.5e9) as u64;
        while !done() && crate::stats::now_ns() < max {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// The step's figures from the shared counters, judged.
    pub fn finish(
        &self,
        ctx: &Ctx,
        scheduled: u64,
        expected: u64,
        delivered: u64,
        usage: Usage,
    ) -> Step {
        let c = &ctx.sh.c;
        let last = c.last_recv_ns.get();
        let mut s = Step {
            rate: self.rate,
            secs: self.secs,
            scheduled,
            expected,
            delivered,
            replies_ok: c.replies_ok.get(),
            replies_err: c.replies_err.get(),
            closes: c.closes.get(),
            achieved: if last > self.start {
                (delivered as f64 / ((last - self.start) as f64 / 1e9)).round()
            } else {
                0.0
            },
            drain_ms: (last.saturating_sub(self.end)) as f64 / 1e6,
            latency: ctx.sh.lat.borrow().summary(),
            latency_first_quarter: ctx.sh.lat_early.borrow().summary(),
            send_lag_p99_ms: ctx.sh.lag.borrow().summary().p99_ms,
            usage,
            pass: false,
            why: String::new(),
            generator_bound: false,
        };
        s.judge();
        s
    }
}

impl Step {
    /// The step's progress line on stderr; `detail` follows the rate.
    pub fn print(&self, label: &str, detail: &str) {
        eprintln!(
            "  {label} {:>9}/s{detail}: delivered {}/{} p50 {} p99 {} hub {} gen {:.0}% other {:.0}% retrans {} -> {}",
            int(self.rate),
            int(self.delivered as f64),
            int(self.expected as f64),
            ms(self.latency.p50_ms),
            ms(self.latency.p99_ms),
            pct(self.usage.hub_cpu_pct),
            self.usage.gen_cpu_pct,
            self.usage.other_cpu_pct,
            self.usage.net.tcp_retrans_segs,
            if self.pass { "pass" } else { &self.why }
        );
    }
}

/// Finds the highest rate that passes: geometric steps from `start` by `factor` until a
/// step fails, then two bisections between the last pass and the first failure.
pub async fn ladder(
    start: f64,
    factor: f64,
    max_steps: usize,
    mut step: impl AsyncFnMut(f64) -> Step,
) -> (f64, Vec<Step>) {
    let mut steps = Vec::new();
    let mut best = 0.0;
    let mut failed_at = None;
    let mut rate = start;
    for _ in 0..max_steps {
        let s = step(rate).await;
        let pass = s.pass;
        steps.push(s);
        if pass {
            best = rate;
            rate *= factor;
        } else {
            failed_at = Some(rate);
            break;
        }
    }
    if let Some(mut hi) = failed_at {
        let mut lo = best;
        if lo == 0.0 {
            lo = hi / 4.0;
        }
        for _ in 0..2 {
            let mid = ((lo + hi) / 2.0).round();
            let s = step(mid).await;
            let pass = s.pass;
            steps.push(s);
            if pass {
                best = mid;
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    (best, steps)
}

/// `12345.6` → `12,346`.
pub fn int(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Milliseconds with sensible precision.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

pub fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.2} %"))
}

/// Where the generator pins itself — noted when a step looks generator-bound.
pub fn gen_bound_note(steps: &[Step]) -> Option<String> {
    steps.iter().find(|s| s.generator_bound).map(|s| {
        format!(
            "at {} /s the generator's own core was at {:.0} % (send lag p99 {}): figures at and above this rate are bounded by the generator, not necessarily the hub",
            int(s.rate),
            s.usage.gen_cpu_pct,
            ms(s.send_lag_p99_ms)
        )
    })
}

/// The generator's CPU cost per message at a step, and the rate one core could drive at
/// that cost: when the ceiling is close to the measured maximum, the generator limits.
pub fn gen_cost_note(s: &Step, unit: &str) -> Option<String> {
    if s.delivered == 0 || s.usage.gen_cpu_pct <= 0.0 {
        return None;
    }
    let per_sec = s.delivered as f64 / s.usage.secs.max(1e-9);
    let us = s.usage.gen_cpu_pct / 100.0 / per_sec * 1e6;
    Some(format!(
        "generator cost at {} {unit}/s: {us:.1} µs of its core per delivery (ceiling ≈ {} {unit}/s on one core)",
        int(s.rate),
        int(1e6 / us)
    ))
}

/// The hub's own ceiling extrapolated from its CPU use at the best passing step (its CPU
/// time grows about linearly with the rate): useful when the generator limits first.
pub fn hub_capacity_note(steps: &[Step], unit: &str) -> Option<(f64, String)> {
    let s = steps
        .iter()
        .filter(|s| s.pass)
        .max_by(|a, b| a.rate.total_cmp(&b.rate))?;
    let cpu = s.usage.hub_cpu_pct?;
    if cpu <= 1.0 {
        return None;
    }
    let per_sec = s.delivered as f64 / s.usage.secs.max(1e-9);
    let cap = per_sec * 100.0 / cpu;
    Some((
        cap.round(),
        format!(
            "the hub used {cpu:.0} % of its core at {} {unit}/s: about {:.1} µs per delivery, so one core would saturate near {} {unit}/s",
            int(s.rate),
            cpu / 100.0 / per_sec * 1e6,
            int(cap)
        ),
    ))
}

pub type CtxRc = Rc<Ctx>;
