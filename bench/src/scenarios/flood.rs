//! S8 (issue 12 item 5): a login flood on the Bester door. `--flood` connections (2,000),
//! each from its own loopback address (127.3.x.y) with its own username, send one login
//! with a wrong password at once, so neither the per-address connection cap nor the login
//! throttle stops them and every one reaches the password hashing. Meanwhile one Phoenix
//! device heartbeats every 50 ms and, once the flood is under way, bob logs in with the
//! right password from 127.0.0.2 (retrying on `busy`, the hub's "try again").
//!
//! Measured: the hub's RSS before, its peak (VmHWM) and after; its threads; how long the
//! flood took to be answered and how; heartbeat round trips; bob's time to get in. The hub
//! is killed if its RSS passes `--flood-rss-limit-mib` (a hub without login limits, such
//! as homehub before issue 12, would otherwise take the machine).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use super::{CtxRc, int, ms};
use crate::report::ScenarioResult;
use crate::stats::{Hist, now_ns, round1};

const PASSWORD: &str = "correct horse battery";

/// A port nobody listens on now, for the hub's Bester listener (the hub logs the port it
/// bound but prints only the HTTP one).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// (VmRSS KiB, VmHWM KiB, threads) of a process.
fn proc_status(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

fn login_frame(user: &str, password: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "header": {"authentication": {"username": user, "password": password}, "scope": "client"},
        "payload": {"type": "authenticate", "data": null}
    })
    .to_string();
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(body.as_bytes());
    f
}

/// One login from `ip`; the status it was answered with (or why there was none).
async fn login(addr: SocketAddr, ip: IpAddr, user: &str, password: &str) -> String {
    let attempt = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(ip, 0))?;
        let mut s: TcpStream = socket.connect(addr).await?;
        s.write_all(&login_frame(user, password)).await?;
        let mut prefix = [0u8; 4];
        s.read_exact(&mut prefix).await?;
        let mut body = vec![0u8; u32::from_le_bytes(prefix) as usize];
        s.read_exact(&mut body).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok::<_, std::io::Error>(v["header"]["status"].as_str().unwrap_or("?").to_owned())
    };
    match tokio::time::timeout(Duration::from_secs(30), attempt).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => format!("io: {:?}", e.kind()),
        Err(_) => "no answer in 30 s".to_owned(),
    }
}

/// `POST /api/bester/users` over a plain socket.
async fn add_user(http: SocketAddr, token: &str, user: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({"username": user, "password": PASSWORD}).to_string();
    let req = format!(
        "POST /api/bester/users HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(http).await?;
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await??;
    if !out.starts_with("HTTP/1.1 201") {
        bail!(
            "adding {user}: {}",
            out.lines().next().unwrap_or("no answer")
        );
    }
    Ok(())
}

pub async fn s8(ctx: &CtxRc) -> anyhow::Result<ScenarioResult> {
    let mut r = ScenarioResult::new("S8", "login flood");
    if !ctx.spawns_hub() {
        r.note("skipped: needs --hub-bin (the hub's Bester listener and its memory)");
        return Ok(r);
    }
    let n = ctx.set.flood;
    let bester = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    ctx.start_hub_with(
        "s8",
        &[("HOMEHUB_BESTER_BIND".to_owned(), bester.to_string())],
    )
    .await?;
    let pid = ctx.hub_pid().context("hub pid")?;
    let http = ctx.target().addr;
    let token = ctx.admin_token.clone().unwrap_or_default();
    add_user(http, &token, "bob").await?;

    // The device: joined to its lock, a heartbeat every 50 ms, round trips recorded.
    ctx.set_phase("S8 device");
    let url = ctx.target().url(&ctx.name("s8", 0));
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("the device connects")?;
    let serial = ctx.serial("s8", 0);
    ws.send(Message::Text(
        serde_json::json!(["1", "1", format!("lock:{serial}"), "phx_join", {}])
            .to_string()
            .into(),
    ))
    .await?;
    let _join = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .context("join reply")?;
    let heartbeats = Rc::new(RefCell::new(Hist::default()));
    let hb_stop = Rc::new(Cell::new(false));
    let hb_lost = Rc::new(Cell::new(0u64));
    let device = {
        let (heartbeats, hb_stop, hb_lost) = (heartbeats.clone(), hb_stop.clone(), hb_lost.clone());
        tokio::task::spawn_local(async move {
            let mut next = 1u64;
            while !hb_stop.get() {
                next += 1;
                let r = next.to_string();
                let frame = serde_json::json!([null, r, "phoenix", "heartbeat", {}]).to_string();
                let sent = now_ns();
                if ws.send(Message::Text(frame.into())).await.is_err() {
                    hb_lost.set(hb_lost.get() + 1);
                    break;
                }
                let got = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(Ok(m)) = ws.next().await {
                        if let Message::Text(t) = m
                            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
                            && v[1] == serde_json::json!(r)
                        {
                            return true;
                        }
                    }
                    false
                })
                .await;
                match got {
                    Ok(true) => heartbeats.borrow_mut().record(now_ns() - sent),
                    _ => hb_lost.set(hb_lost.get() + 1),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    crate::pace::sleep_secs(1.0).await;
    heartbeats.borrow_mut().reset();

    let (rss0, _, threads0) = proc_status(pid);
    let meter = ctx.meter();
    ctx.set_phase(format!("S8 flood of {n}"));
    let killed_at = Rc::new(Cell::new(None::<(u64, u64)>));
    let max_threads = Rc::new(Cell::new(threads0));
    // Sampled too, since a killed hub's VmHWM can no longer be read.
    let max_rss = Rc::new(Cell::new(rss0));
    let sampling = Rc::new(Cell::new(true));
    let limit_kib = ctx.set.flood_rss_limit_mib * 1024;
    let sampler = {
        let (killed_at, max_threads, sampling, max_rss) = (
            killed_at.clone(),
            max_threads.clone(),
            sampling.clone(),
            max_rss.clone(),
        );
        tokio::task::spawn_local(async move {
            let t0 = now_ns();
            while sampling.get() {
                let (rss, _, threads) = proc_status(pid);
                max_threads.set(max_threads.get().max(threads));
                max_rss.set(max_rss.get().max(rss));
                if rss > limit_kib && killed_at.get().is_none() {
                    // SAFETY: kill(2) on the hub we spawned.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    killed_at.set(Some((rss, (now_ns() - t0) / 1_000_000)));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let t0 = now_ns();
    let statuses: Rc<RefCell<BTreeMap<String, u64>>> = Rc::default();
    let last_answer = Rc::new(Cell::new(t0));
    let first_busy = Rc::new(Cell::new(None::<u64>));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (statuses, last_answer, first_busy) =
            (statuses.clone(), last_answer.clone(), first_busy.clone());
        let ip = IpAddr::V4(Ipv4Addr::new(127, 3, (i / 250) as u8, (i % 250) as u8 + 1));
        tasks.push(tokio::task::spawn_local(async move {
            let status = login(bester, ip, &format!("flood{i}"), "wrong password").await;
            let now = now_ns();
            last_answer.set(last_answer.get().max(now));
            if status == "busy" && first_busy.get().is_none() {
                first_busy.set(Some(now));
            }
            *statuses.borrow_mut().entry(status).or_default() += 1;
        }));
    }

    // bob, once the flood is under way (its first `busy`, or after 1 s).
    let bob_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    while first_busy.get().is_none() && now_ns() - t0 < 1_000_000_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bob_t0 = now_ns();
    let mut bob_attempts = 0;
    let bob = loop {
        bob_attempts += 1;
        let s = login(bester, bob_ip, "bob", PASSWORD).await;
        if s != "busy" || now_ns() - bob_t0 > 30_000_000_000 {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let bob_ms = (now_ns() - bob_t0) as f64 / 1e6;

    for t in tasks {
        let _ = t.await;
    }
    let served_ms = (last_answer.get() - t0) as f64 / 1e6;
    let usage = meter.finish();
    sampling.set(false);
    let _ = sampler.await;
    hb_stop.set(true);
    let _ = device.await;
    let (rss1, hwm, _) = proc_status(pid);
    let hwm = hwm.max(max_rss.get());
    let statuses = statuses.borrow().clone();
    let hb = heartbeats.borrow().summary();
    let mib = |k: u64| round1(k as f64 / 1024.0);

    r.put("flood", n);
    r.put("statuses", &statuses);
    r.put("served_ms", served_ms);
    r.put("hub_rss_before_mib", mib(rss0));
    r.put("hub_rss_peak_mib", mib(hwm));
    r.put("hub_rss_after_mib", mib(rss1));
    r.put("hub_threads_before", threads0);
    r.put("hub_threads_max", max_threads.get());
    r.put("heartbeats", hb);
    r.put("heartbeats_lost", hb_lost.get());
    r.put("bob", &bob);
    r.put("bob_attempts", bob_attempts);
    r.put("bob_ms", bob_ms);
    r.put("usage", &usage);
    let summary = statuses
        .iter()
        .map(|(k, v)| format!("{} {k}", int(*v as f64)))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some((rss, after_ms)) = killed_at.get() {
        r.put("killed_at_rss_mib", mib(rss));
        r.put("killed_after_ms", after_ms);
        r.note(format!(
            "the hub was killed {after_ms} ms into the flood, when its RSS reached {} MiB (--flood-rss-limit-mib)",
            mib(rss)
        ));
    }
    let growth = hwm.saturating_sub(rss0);
    r.check(
        "hub RSS growth < 64 MiB",
        format!(
            "{} → peak {} MiB (+{} MiB), {} MiB after; threads {threads0} → {}",
            mib(rss0),
            mib(hwm),
            mib(growth),
            mib(rss1),
            max_threads.get()
        ),
        Some(growth < 64 * 1024 && killed_at.get().is_none()),
    );
    r.check(
        "every flood login answered",
        format!("{summary} in {}", ms(served_ms)),
        Some(
            statuses
                .keys()
                .all(|k| k == "authentication_failed" || k == "busy"),
        ),
    );
    r.check(
        "heartbeat replies < 100 ms",
        format!(
            "{} heartbeats, p50 {} p99 {} max {}, {} lost",
            hb.count,
            ms(hb.p50_ms),
            ms(hb.p99_ms),
            ms(hb.max_ms),
            hb_lost.get()
        ),
        Some(hb.max_ms < 100.0 && hb_lost.get() == 0 && hb.count > 0),
    );
    r.check(
        "a correct login from another address succeeds",
        format!("{bob} after {bob_attempts} attempt(s), {}", ms(bob_ms)),
        Some(bob == "ok"),
    );
    Ok(r)
}
