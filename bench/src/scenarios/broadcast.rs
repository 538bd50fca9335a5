//! S5 (a lock's `event` fanned out on `events` to N subscribers) and S5b (the same with
//! 1 % of the subscribers not reading).
//!
//! One device joins `lock:<serial>` and pushes `event` `{"t": <intended ns>, "seq": k}`;
//! the hub stores it and broadcasts `{"from", "message"}` on `events`. Subscribers record
//! the latency of every delivery and the per-event first/last delivery time.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tokio::sync::{mpsc, watch};

use super::{
    CtxRc, Step, Window, gen_bound_note, gen_cost_note, hub_capacity_note, int, ladder, ms,
};
use crate::ctx::FleetOut;
use crate::pace;
use crate::report::ScenarioResult;
use crate::session::{Role, Spec};
use crate::stats::{Hist, Lat, now_ns, round1};
use crate::sys;
use serde::Serialize;

type PushTx = mpsc::UnboundedSender<(u64, u64)>;

/// One reading during S5b.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    t_s: f64,
    hub_rss_kib: Option<u64>,
    tcp_mem_kib: Option<u64>,
    hub_dropped: Option<f64>,
}

struct Fanout {
    /// One channel per pushing lock device; events go round-robin.
    pushers: Vec<PushTx>,
    fleet: FleetOut,
    /// Subscribers joined (the pushers excluded).
    subscribers: u64,
    /// Of which stalled.
    stalled: u64,
    stall: watch::Sender<bool>,
    next_seq: Cell<u64>,
}

async fn setup(ctx: &CtxRc, tag: &str, stall_every: Option<usize>) -> Fanout {
    ctx.sh.reset_phase();
    ctx.sh.events.borrow_mut().clear();
    let (stall_tx, stall_rx) = watch::channel(false);
    let n = ctx.set.connections;
    let mut specs = Vec::with_capacity(n + ctx.set.pushers);
    let mut pushers = Vec::new();
    for p in 0..ctx.set.pushers {
        let (push, push_rx) = mpsc::unbounded_channel();
        pushers.push(push);
        specs.push(Spec {
            idx: n + p,
            name: ctx.name(tag, n + p),
            topics: vec![format!("lock:{}", ctx.serial(tag, p))],
            role: Role::Pusher { cmds: push_rx },
            reconnect: false,
            rcvbuf: None,
            intended_ns: None,
            stop: ctx.stop_rx(),
            target: None,
        });
    }
    let mut stalled = 0;
    for i in 0..n {
        let stall = stall_every.is_some_and(|k| i % k == k - 1);
        stalled += stall as u64;
        specs.push(Spec {
            idx: i,
            name: ctx.name(tag, i),
            topics: vec!["events".to_owned()],
            role: if stall {
                Role::Stalled {
                    stall: stall_rx.clone(),
                }
            } else {
                Role::Subscriber
            },
            reconnect: false,
            rcvbuf: stall.then_some(ctx.set.stall_rcvbuf),
            intended_ns: None,
            stop: ctx.stop_rx(),
            target: None,
        });
    }
    ctx.set_phase(format!("{tag} connect+join"));
    let fleet = ctx.fleet(specs, ctx.set.concurrency).await;
    ctx.wait_hub_quiet(20.0).await;
    Fanout {
        subscribers: fleet.ok.saturating_sub(pushers.len() as u64),
        pushers,
        fleet,
        stalled,
        stall: stall_tx,
        next_seq: Cell::new(0),
    }
}

/// Per-event fan-out times: push → first and → last delivery, for events `from..to`
/// that reached `expect` subscribers.
fn event_spans(ctx: &CtxRc, from: u64, to: u64, expect: u64) -> (Hist, Hist, u64) {
    let ev = ctx.sh.events.borrow();
    let (mut first, mut last, mut complete) = (Hist::default(), Hist::default(), 0);
    for seq in from..to {
        if let Some(e) = ev.get(seq as usize)
            && e.count > 0
        {
            first.record(e.first_ns.saturating_sub(e.sent_ns));
            if e.count as u64 >= expect {
                complete += 1;
                last.record(e.last_ns.saturating_sub(e.sent_ns));
            }
        }
    }
    (first, last, complete)
}

fn delivered(ctx: &CtxRc, from: u64, to: u64) -> u64 {
    let ev = ctx.sh.events.borrow();
    (from..to)
        .filter_map(|s| ev.get(s as usize))
        .map(|e| e.count as u64)
        .sum()
}

/// Pushes events at `rate / receivers` per second for `secs`; judges like a relay step.
async fn fan_step(ctx: &CtxRc, f: &Fanout, rate: f64, secs: f64, label: &str) -> Step {
    let receivers = f.subscribers - f.stalled;
    ctx.sh.reset_phase();
    ctx.set_phase(format!("{label} {} deliveries/s", int(rate)));
    let ev_rate = rate / receivers.max(1) as f64;
    let m = ctx.meter();
    let w = Window::open(ctx, rate, secs);
    let seq0 = f.next_seq.get();
    let sent = pace::open_loop(ev_rate, w.start, w.end, |i, t| {
        let _ = f.pushers[(i % f.pushers.len() as u64) as usize].send((t, seq0 + i));
    })
    .await;
    f.next_seq.set(seq0 + sent);
    let expected = sent * receivers;
    let c = &ctx.sh.c;
    w.drain(|| {
        delivered(ctx, seq0, seq0 + sent) >= expected
            && c.replies_ok.get() + c.replies_err.get() >= sent
    })
    .await;
    let got = delivered(ctx, seq0, seq0 + sent);
    let s = w.finish(ctx, sent, expected, got, m.finish());
    s.print(label, &format!(" ({ev_rate:.1} events/s)"));
    pace::sleep_secs(0.3).await;
    s
}

pub async fn s5(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S5", "broadcast");
    ctx.start_hub("s5").await?;
    let f = setup(ctx, "s5", None).await;
    let subs = f.subscribers;
    r.put("fleet", f.fleet);
    r.put("subscribers", subs);

    // Single pushes: time to the last delivery.
    ctx.sh.reset_phase();
    ctx.set_phase(format!(
        "S5 single pushes to {} subscribers",
        int(subs as f64)
    ));
    let m = ctx.meter();
    let seq0 = f.next_seq.get();
    for k in 0..ctx.set.rounds as u64 {
        let seq = seq0 + k;
        let t = now_ns() + 1_000_000;
        pace::until(t).await;
        let _ = f.pushers[0].send((t, seq));
        let deadline = t + 2_000_000_000;
        loop {
            let count = ctx
                .sh
                .events
                .borrow()
                .get(seq as usize)
                .map_or(0, |e| e.count as u64);
            if count >= subs || now_ns() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        pace::sleep_secs(0.05).await;
    }
    let rounds_usage = m.finish();
    f.next_seq.set(seq0 + ctx.set.rounds as u64);
    let (first, last, complete) = event_spans(ctx, seq0, seq0 + ctx.set.rounds as u64, subs);
    let rounds_lat = ctx.sh.lat.borrow().summary();
    let (first, last) = (first.summary(), last.summary());
    r.put(
        "single_pushes",
        serde_json::json!({
            "pushes": ctx.set.rounds, "complete": complete,
            "push_to_first_delivery": first, "push_to_last_delivery": last,
            "per_delivery": rounds_lat, "usage": rounds_usage,
        }),
    );
    r.check(
        "last delivery ≤ 40 ms after the push",
        format!(
            "median {}, max {} over {} pushes to {} subscribers ({} complete)",
            ms(last.p50_ms),
            ms(last.max_ms),
            ctx.set.rounds,
            int(subs as f64),
            complete
        ),
        Some(complete == ctx.set.rounds as u64 && last.p50_ms <= 40.0),
    );

    // Sustained rate ladder.
    let step_secs = ctx.set.step_secs;
    let (best, steps) = ladder(ctx.set.deliveries_start_rate, 1.5, 12, async |rate| {
        fan_step(ctx, &f, rate, step_secs, "S5 ladder").await
    })
    .await;
    let first_fail = steps.iter().find(|s| !s.pass);
    r.check(
        "sustained ≥ 400,000 deliveries/s",
        format!(
            "{} deliveries/s{}",
            int(best),
            first_fail
                .map(|f| format!(" ({}/s failed: {})", int(f.rate), f.why))
                .unwrap_or_default()
        ),
        Some(best >= 400_000.0),
    );
    if let Some(n) = gen_bound_note(&steps) {
        r.note(n);
    }
    if let Some(n) = steps
        .iter()
        .rfind(|s| s.pass)
        .and_then(|s| gen_cost_note(s, "deliveries"))
    {
        r.note(n);
    }
    if let Some((cap, n)) = hub_capacity_note(&steps, "deliveries") {
        r.put("hub_capacity_estimate", cap);
        r.note(n);
    }

    // Steady open loop: the baseline of S5b.
    let steady_rate = ctx.set.deliveries_rate.unwrap_or(if best > 0.0 {
        (best * 0.5).round()
    } else {
        50_000.0
    });
    let steady = fan_step(ctx, &f, steady_rate, ctx.set.steady_secs, "S5 steady").await;
    let seq_end = f.next_seq.get();
    let (_, steady_last, _) = event_spans(ctx, seq_end - steady.scheduled, seq_end, subs);
    let steady_last = steady_last.summary();
    ctx.carry.s5_steady_rate.set(Some(steady_rate));
    ctx.carry.s5_steady_p99_ms.set(Some(steady.latency.p99_ms));
    ctx.carry.s5_max_rate.set(Some(best));
    r.note(format!(
        "steady open loop at {} deliveries/s: per-delivery p50 {}, p99 {}; push → last delivery p50 {}, max {}",
        int(steady_rate),
        ms(steady.latency.p50_ms),
        ms(steady.latency.p99_ms),
        ms(steady_last.p50_ms),
        ms(steady_last.max_ms)
    ));
    r.put("max_rate", best);
    r.put("ladder", &steps);
    r.put("steady", &steady);
    r.put("steady_push_to_last_delivery", steady_last);
    r.put("errors", ctx.sh.errors_snapshot());
    Ok(r)
}

pub async fn s5b(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S5b", "slow consumers");
    ctx.start_hub("s5b").await?;
    let every = (100.0 / ctx.set.stall_percent.max(0.01)).round().max(1.0) as usize;
    let f = setup(ctx, "s5b", Some(every)).await;
    r.put("fleet", f.fleet);
    r.put("subscribers", f.subscribers);
    r.put("stalled", f.stalled);
    let rate = ctx
        .carry
        .s5_steady_rate
        .get()
        .or(ctx.set.deliveries_rate)
        .unwrap_or(if ctx.set.short { 50_000.0 } else { 200_000.0 });

    // RSS, kernel TCP memory and the hub's slow-consumer count while the stalled readers
    // do not read.
    let samples: Rc<RefCell<Vec<Sample>>> = Rc::default();
    let running = Rc::new(Cell::new(true));
    let t0 = now_ns();
    let sampler = {
        let (ctx, samples, running) = (ctx.clone(), samples.clone(), running.clone());
        tokio::task::spawn_local(async move {
            while running.get() {
                let dropped = ctx.hub_metric("homehub_slow_consumers_closed_total").await;
                samples.borrow_mut().push(Sample {
                    t_s: round1((now_ns() - t0) as f64 / 1e9),
                    hub_rss_kib: ctx.hub_rss_kib(),
                    tcp_mem_kib: sys::tcp_mem_kib(),
                    hub_dropped: dropped,
                });
                pace::sleep_secs(1.0).await;
            }
        })
    };
    let _ = f.stall.send(true);
    let step = fan_step(ctx, &f, rate, ctx.set.stall_secs, "S5b steady").await;
    running.set(false);
    let _ = sampler.await;
    let others_lat: Lat = step.latency;

    // Let the stalled readers read again: the ones the hub dropped find the close.
    ctx.set_phase("S5b: stalled readers resume");
    let closes_before = ctx.sh.c.closes.get();
    let _ = f.stall.send(false);
    let wait_until = now_ns() + 5_000_000_000;
    while (ctx.sh.c.closes.get() - closes_before) < f.stalled && now_ns() < wait_until {
        pace::sleep_secs(0.05).await;
    }
    let stalled_closed = ctx.sh.stalled_closed.borrow().clone();
    let dropped: u64 = stalled_closed.values().sum();
    let hub_count = ctx.hub_metric("homehub_slow_consumers_closed_total").await;
    let samples = samples.borrow().clone();
    let rss_start = samples.first().and_then(|s| s.hub_rss_kib);
    let rss_peak = samples.iter().filter_map(|s| s.hub_rss_kib).max();
    let rss_end = samples.last().and_then(|s| s.hub_rss_kib);
    let tcp_start = samples.first().and_then(|s| s.tcp_mem_kib);
    let tcp_peak = samples.iter().filter_map(|s| s.tcp_mem_kib).max();
    let first_drop = samples
        .iter()
        .find(|s| s.hub_dropped.unwrap_or(0.0) > 0.0)
        .map(|s| s.t_s);
    let frame_bytes = 96.0; // an `events` frame of this generator, roughly
    let bytes_each = step.scheduled as f64 * frame_bytes;

    r.put("rate", rate);
    r.put("steady", &step);
    r.put("stalled_closed_seen_by_clients", &stalled_closed);
    r.put("hub_slow_consumers_closed_total", hub_count);
    r.put("samples", &samples);
    r.put("first_drop_seen_after_s", first_drop);
    r.put("errors", ctx.sh.errors_snapshot());

    let base = ctx.carry.s5_steady_p99_ms.get();
    let rise = base.map(|b| 100.0 * (others_lat.p99_ms - b) / b.max(0.001));
    r.check(
        "others' p99 rises ≤ 20 %",
        match base {
            Some(b) => format!(
                "p99 {} vs {} in S5 ({:+.0} %) at {} deliveries/s; {} of {} delivered",
                ms(others_lat.p99_ms),
                ms(b),
                rise.unwrap_or(0.0),
                int(rate),
                int(step.delivered as f64),
                int(step.expected as f64)
            ),
            None => format!(
                "p99 {} at {} deliveries/s (no S5 baseline in this run)",
                ms(others_lat.p99_ms),
                int(rate)
            ),
        },
        rise.map(|x| x <= 20.0 && step.delivered >= step.expected),
    );
    // Bounded: growth within what the queue policy allows (stalled × queue × frame).
    // 1 KiB per queued frame of every stalled reader's full queue, plus 16 MiB of slack.
    let bound_kib = f.stalled as f64 * 256.0 + 16.0 * 1024.0;
    let growth = rss_start.zip(rss_peak).map(|(a, p)| p.saturating_sub(a));
    r.check(
        "hub memory stays bounded",
        match (rss_start, rss_peak, rss_end) {
            (Some(a), Some(p), Some(e)) => format!(
                "RSS {:.1} → peak {:.1} → end {:.1} MiB over {:.0} s (bound used: +{:.0} MiB); kernel TCP memory {} → peak {} MiB",
                a as f64 / 1024.0,
                p as f64 / 1024.0,
                e as f64 / 1024.0,
                ctx.set.stall_secs,
                bound_kib / 1024.0,
                tcp_start.map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0)),
                tcp_peak.map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0)),
            ),
            _ => "n/a (no process metrics)".to_owned(),
        },
        growth.map(|g| (g as f64) <= bound_kib),
    );
    r.check(
        "slow sockets dropped by policy",
        format!(
            "{dropped} of {} stalled sockets closed{}{} ({} KiB sent to each during the window)",
            f.stalled,
            hub_count
                .map(|c| format!(", hub counted {c:.0} slow-consumer closes"))
                .unwrap_or_default(),
            first_drop
                .map(|t| format!(", first after {t:.0} s"))
                .unwrap_or_default(),
            round1(bytes_each / 1024.0)
        ),
        Some(dropped >= f.stalled && f.stalled > 0),
    );
    if !stalled_closed.is_empty() {
        r.note(format!(
            "stalled sockets' close reasons: {stalled_closed:?}"
        ));
    }
    Ok(r)
}
