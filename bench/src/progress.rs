//! The once-a-second progress line on stderr (overwritten in place on a terminal).

use std::io::IsTerminal;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use crate::ctx::Ctx;
use crate::scenarios::int;
use crate::stats::now_ns;
use crate::sys::CpuMark;

fn tty() -> bool {
    static TTY: OnceLock<bool> = OnceLock::new();
    *TTY.get_or_init(|| std::io::stderr().is_terminal())
}

/// Prints a log line on stderr without mangling the progress line.
pub fn say(msg: impl AsRef<str>) {
    if tty() {
        eprint!("\r\x1b[K{}\n", msg.as_ref());
    } else {
        eprintln!("{}", msg.as_ref());
    }
}

/// Runs forever: one line per second while a phase is set.
pub async fn run(ctx: Rc<Ctx>) {
    let c = &ctx.sh.c;
    let mut prev = (c.sent.get(), c.recv.get(), c.established.get());
    let mut gen_prev = CpuMark::take(std::process::id());
    let mut hub_prev: Option<(u32, CpuMark)> = None;
    let mut busy_prev = crate::sys::busy_ticks();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let phase = ctx.phase.borrow().clone();
        let now = (c.sent.get(), c.recv.get(), c.established.get());
        let rate = |a: u64, b: u64| int(b.saturating_sub(a) as f64);
        let gen_now = CpuMark::take(std::process::id());
        let gen_pct = gen_prev.zip(gen_now).map_or(0.0, |(a, b)| a.pct_until(&b));
        gen_prev = gen_now;
        let busy_now = crate::sys::busy_ticks();
        let busy = match (busy_prev.first(), busy_now.first()) {
            (Some(a), Some(b)) => {
                100.0 * b.saturating_sub(*a) as f64 / crate::sys::clk_tck() as f64
            }
            _ => 0.0,
        };
        busy_prev = busy_now;
        let mut hub_pct = 0.0;
        let hub = match ctx.hub_pid() {
            Some(pid) => {
                let mark = CpuMark::take(pid);
                let pct = match (hub_prev, mark) {
                    (Some((p, a)), Some(b)) if p == pid => Some(a.pct_until(&b)),
                    _ => None,
                };
                hub_pct = pct.unwrap_or(0.0);
                hub_prev = mark.map(|m| (pid, m));
                let rss = ctx.hub_rss_kib().unwrap_or(0) as f64 / 1024.0;
                format!(
                    " | hub {} {:.1} MiB",
                    pct.map_or("--".to_owned(), |p| format!("{p:.0}%")),
                    rss
                )
            }
            None => String::new(),
        };
        let other = (busy - hub_pct - gen_pct).max(0.0);
        if !phase.is_empty() {
            let line = format!(
                "[{:7.1}s] {phase} | open {} +{}/s fail {} | sent {}/s recv {}/s | closes {} err {}{hub} | gen {gen_pct:.0}% | other {other:.0}%",
                now_ns() as f64 / 1e9,
                int(c.open.get() as f64),
                rate(prev.2, now.2),
                c.connect_failed.get(),
                rate(prev.0, now.0),
                rate(prev.1, now.1),
                c.closes.get(),
                c.replies_err.get(),
            );
            if tty() {
                eprint!("\r\x1b[K{line}");
            } else {
                eprintln!("{line}");
            }
        }
        prev = now;
    }
}
