//! S4: N/2 device pairs joined to `relay`; each device `send`s `{target: <peer>, payload:
//! {t: <intended ns>}}` and receives its peer's `packet`s. A rate ladder finds the highest
//! rate delivered with 0 loss, then an open-loop run at half of it measures latency.

use tokio::sync::mpsc;

use super::{
    CtxRc, Step, Window, gen_bound_note, gen_cost_note, hub_capacity_note, int, ladder, ms, pct,
};
use crate::pace;
use crate::report::ScenarioResult;
use crate::session::{Role, Spec};

/// Runs `rate` msgs/s spread over every device for `secs`, then waits for the backlog.
pub async fn relay_step(
    ctx: &CtxRc,
    txs: &[mpsc::UnboundedSender<u64>],
    rate: f64,
    secs: f64,
    label: &str,
) -> Step {
    ctx.sh.reset_phase();
    ctx.set_phase(format!("{label} {}/s", int(rate)));
    let m = ctx.meter();
    let w = Window::open(ctx, rate, secs);
    let k = txs.len() as u64;
    let scheduled = pace::open_loop(rate, w.start, w.end, |i, t| {
        let _ = txs[(i % k) as usize].send(t);
    })
    .await;
    let c = &ctx.sh.c;
    w.drain(|| c.recv.get() >= scheduled && c.replies_ok.get() + c.replies_err.get() >= scheduled)
        .await;
    let s = w.finish(ctx, scheduled, scheduled, c.recv.get(), m.finish());
    s.print(label, "");
    // Let queues settle before the next step.
    pace::sleep_secs(0.3).await;
    s
}

pub async fn s4(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S4", "relay");
    let n = ctx.set.connections & !1;
    ctx.start_hub("s4").await?;
    ctx.sh.reset_phase();
    ctx.set_phase("S4 connect+join relay");
    let mut txs = Vec::with_capacity(n);
    let specs: Vec<Spec> = (0..n)
        .map(|i| {
            let (tx, rx) = mpsc::unbounded_channel();
            txs.push(tx);
            Spec {
                idx: i,
                name: ctx.name("s4", i),
                topics: vec!["relay".to_owned()],
                role: Role::Relay {
                    peer: ctx.name("s4", i ^ 1).to_lowercase(),
                    cmds: rx,
                },
                reconnect: false,
                rcvbuf: None,
                intended_ns: None,
                stop: ctx.stop_rx(),
                target: None,
            }
        })
        .collect();
    let fleet = ctx.fleet(specs, ctx.set.concurrency).await;
    ctx.wait_hub_quiet(20.0).await;
    r.put("fleet", fleet);
    r.put("pairs", n / 2);

    let step_secs = ctx.set.step_secs;
    let (best, steps) = ladder(ctx.set.relay_start_rate, 1.5, 14, async |rate| {
        relay_step(ctx, &txs, rate, step_secs, "S4 ladder").await
    })
    .await;
    let steady_rate = ctx.set.relay_rate.unwrap_or(if best > 0.0 {
        (best * 0.5).round()
    } else {
        1000.0
    });
    let steady = relay_step(ctx, &txs, steady_rate, ctx.set.steady_secs, "S4 open loop").await;

    let first_fail = steps.iter().find(|s| !s.pass);
    r.check(
        "≥ 100,000 msgs/s with 0 loss",
        format!(
            "{} msgs/s{}",
            int(best),
            first_fail
                .map(|f| format!(" ({}/s failed: {})", int(f.rate), f.why))
                .unwrap_or_default()
        ),
        Some(best >= 100_000.0),
    );
    let at = format!(
        "at {} msgs/s (50 % of the measured max), hub CPU {}",
        int(steady_rate),
        pct(steady.usage.hub_cpu_pct)
    );
    r.check(
        "open loop at 50 %: p50 ≤ 0.5 ms",
        format!("p50 {} {at}", ms(steady.latency.p50_ms)),
        Some(steady.pass && steady.latency.p50_ms <= 0.5),
    );
    r.check(
        "open loop at 50 %: p99 ≤ 2 ms",
        format!(
            "p99 {} (p99.9 {}, max {}), {} lost",
            ms(steady.latency.p99_ms),
            ms(steady.latency.p999_ms),
            ms(steady.latency.max_ms),
            steady.expected.saturating_sub(steady.delivered)
        ),
        Some(steady.pass && steady.latency.p99_ms <= 2.0),
    );
    if ctx.set.relay_rate.is_some() {
        r.note("the open-loop rate was set with --relay-rate");
    }
    if let Some(n) = gen_bound_note(&steps) {
        r.note(n);
    }
    if let Some(n) = steps
        .iter()
        .rfind(|s| s.pass)
        .and_then(|s| gen_cost_note(s, "msgs"))
    {
        r.note(n);
    }
    if let Some((cap, n)) = hub_capacity_note(&steps, "msgs") {
        r.put("hub_capacity_estimate", cap);
        r.note(n);
    }
    r.put("max_rate", best);
    r.put("ladder", &steps);
    r.put("open_loop", &steady);
    r.put("errors", ctx.sh.errors_snapshot());
    Ok(r)
}
