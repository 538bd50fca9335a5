//! S6: N devices joined to their locks; the hub is SIGKILLed and started again on the same
//! address and database. Devices reconnect on the JS client's backoff and rejoin; we
//! measure from the restarted hub's listening line to the last rejoin reply, and compare
//! every lock's UUID with the one it had before.

use super::{CtxRc, int, lock_spec, ms};
use crate::report::ScenarioResult;
use crate::stats::{Hist, now_ns};
use crate::sys;

pub async fn s6(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S6", "restart");
    if !ctx.spawns_hub() {
        r.note("skipped: needs --hub-bin (the generator must kill and restart the hub)");
        return Ok(r);
    }
    let n = ctx.set.connections;
    ctx.start_hub("s6").await?;
    ctx.sh.reset_phase();
    *ctx.sh.lock_joins.borrow_mut() = vec![None; n];
    ctx.sh.record_lock_joins.set(true);
    ctx.set_phase("S6 connect+join");
    let specs = (0..n)
        .map(|i| {
            let mut s = lock_spec(ctx, "s6", "s6", i);
            s.reconnect = true;
            s
        })
        .collect();
    let fleet = ctx.fleet(specs, ctx.set.concurrency).await;
    ctx.wait_hub_quiet(20.0).await;
    let before: Vec<Option<String>> = ctx
        .sh
        .lock_joins
        .borrow()
        .iter()
        .map(|j| j.as_ref().map(|(_, u)| u.clone()))
        .collect();
    for j in ctx.sh.lock_joins.borrow_mut().iter_mut() {
        *j = None;
    }
    ctx.sh.reset_phase();

    ctx.set_phase("S6 kill -9 + restart");
    let l0 = sys::listen_stats();
    let (killed, up) = ctx.restart_hub_hard().await?;
    let expect = before.iter().filter(|u| u.is_some()).count();
    ctx.set_phase("S6 rejoining");
    let deadline = up + 60_000_000_000;
    loop {
        let rejoined = ctx
            .sh
            .lock_joins
            .borrow()
            .iter()
            .zip(&before)
            .filter(|(j, b)| j.is_some() && b.is_some())
            .count();
        if rejoined >= expect || now_ns() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    ctx.sh.record_lock_joins.set(false);
    let listen = sys::listen_stats().since(&l0);
    let joins = ctx.sh.lock_joins.borrow().clone();
    let mut hist = Hist::default();
    let (mut rejoined, mut changed, mut last) = (0u64, 0u64, 0u64);
    for (j, b) in joins.iter().zip(&before) {
        if let (Some((t, uuid)), Some(old)) = (j, b) {
            rejoined += 1;
            hist.record(t.saturating_sub(up));
            last = last.max(*t);
            if uuid != old {
                changed += 1;
            }
        }
    }
    let all_ms = (last.saturating_sub(up)) as f64 / 1e6;
    let restart_ms = (up - killed) as f64 / 1e6;
    let lat = hist.summary();
    r.put("fleet", fleet);
    r.put("restart_ms", restart_ms);
    r.put("rejoined", rejoined);
    r.put("expected", expect);
    r.put("all_rejoined_after_listening_ms", all_ms);
    r.put("rejoin_after_listening", lat);
    r.put("uuids_changed", changed);
    r.put("kernel_listen_queue", listen);
    if listen.listen_overflows + listen.listen_drops > 0 {
        r.note(format!(
            "the hub's accept queue overflowed during the reconnect storm ({} overflows, {} SYNs dropped)",
            listen.listen_overflows, listen.listen_drops
        ));
    }
    r.put("failed_reconnect_attempts", ctx.sh.reconnect_failures.get());
    r.put("errors", ctx.sh.errors_snapshot());
    r.check(
        "all rejoined ≤ 5 s after the listener is up",
        format!(
            "{} of {} rejoined, last {} after the listening line (p50 {}, p99 {}); kill → listening {}",
            int(rejoined as f64),
            int(expect as f64),
            ms(all_ms),
            ms(lat.p50_ms),
            ms(lat.p99_ms),
            ms(restart_ms)
        ),
        Some(rejoined as usize == expect && all_ms <= 5000.0),
    );
    r.check(
        "same UUIDs",
        format!("{changed} of {} UUIDs changed", int(rejoined as f64)),
        Some(changed == 0 && rejoined as usize == expect),
    );
    r.note(format!(
        "devices reconnect on the Phoenix JS client's backoff (10, 50, 100, 150, 200, 250, 500, 1000, 2000 ms, then 5 s); {} connection attempts were refused or failed while the hub was down or busy",
        int(ctx.sh.reconnect_failures.get() as f64)
    ));
    Ok(r)
}
