//! A simulated device: one lightweight task per connection that connects, joins its topics,
//! heartbeats like the JS client, plays its role (idle, relay peer, broadcast subscriber,
//! event pusher, stalled reader) and, when asked to, reconnects on the JS client's backoff
//! and rejoins.

use std::rc::Rc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Client, ConnErr, js_backoff};
use crate::ctx::Ctx;
use crate::stats::{dec, inc, now_ns};
use crate::wire;

/// What a connection does once joined.
pub enum Role {
    /// Heartbeats only.
    Idle,
    /// Joined to `relay`: sends `send` to `peer` when told (the intended time comes through
    /// the channel) and receives `packet`s.
    Relay {
        peer: String,
        cmds: mpsc::UnboundedReceiver<u64>,
    },
    /// Joined to a lock: pushes `event` `{"t","seq"}` when told.
    Pusher {
        cmds: mpsc::UnboundedReceiver<(u64, u64)>,
    },
    /// Joined to `events`: receives the fan-out.
    Subscriber,
    /// Joined to `events`, but stops reading while the flag is true (heartbeats still go
    /// out, so only the hub's slow-consumer policy can drop it).
    Stalled { stall: watch::Receiver<bool> },
}

/// One device to simulate.
pub struct Spec {
    pub idx: usize,
    pub name: String,
    /// Topics joined in order, each with payload `{}`.
    pub topics: Vec<String>,
    pub role: Role,
    /// Reconnect (JS backoff) and rejoin when the connection ends.
    pub reconnect: bool,
    /// SO_RCVBUF for this socket (stalled readers use a small one).
    pub rcvbuf: Option<u32>,
    /// Intended start (ns since the epoch) for open-loop joins: the join latency is
    /// measured from it. `None`: measured from the actual start.
    pub intended_ns: Option<u64>,
    pub stop: Stop,
    /// The hub this device connects to when it is not the scenario's hub (S9: the other
    /// node of a cluster).
    pub target: Option<Rc<crate::client::Target>>,
}

/// A device's stop signal: fires when the context drops its sender. A oneshot is polled in
/// every `select!` of the connection loop, so it must be cheap (a watch would register a
/// fresh waiter on every iteration).
pub struct Stop {
    rx: oneshot::Receiver<()>,
    fired: bool,
}

impl Stop {
    pub fn new(rx: oneshot::Receiver<()>) -> Stop {
        Stop { rx, fired: false }
    }

    pub fn is_stopped(&mut self) -> bool {
        if !self.fired && !matches!(self.rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            self.fired = true;
        }
        self.fired
    }

    pub async fn wait(&mut self) {
        if !self.fired {
            let _ = (&mut self.rx).await;
            self.fired = true;
        }
    }
}

/// Why a connection loop ended.
enum End {
    Stop,
    Lost(String),
}

fn reason_of_close(m: &Message) -> String {
    match m {
        Message::Close(Some(f)) => format!("closed by hub: {}", u16::from(f.code)),
        _ => "closed by hub: no code".to_owned(),
    }
}

/// Connects and joins every topic of `spec`.
async fn establish(ctx: &Ctx, spec: &Spec) -> Result<(Client, Vec<u64>), ConnErr> {
    let target = spec.target.clone().unwrap_or_else(|| ctx.target());
    let work = async {
        let mut c =
            Client::connect(&target, target.source(spec.idx), &spec.name, spec.rcvbuf).await?;
        let mut refs = Vec::with_capacity(spec.topics.len());
        for topic in &spec.topics {
            let r = c.join(topic, "{}", ctx.timeout()).await?;
            if !r.ok {
                return Err(ConnErr::Refused(wire::reply_reason(&r.payload)));
            }
            if ctx.sh.record_lock_joins.get() && topic.starts_with("lock:") {
                let mut joins = ctx.sh.lock_joins.borrow_mut();
                if spec.idx < joins.len() {
                    joins[spec.idx] = Some((now_ns(), r.uuid().unwrap_or_default()));
                }
            }
            refs.push(r.join_ref);
        }
        Ok((c, refs))
    };
    match tokio::time::timeout(ctx.timeout(), work).await {
        Ok(r) => r,
        Err(_) => Err(ConnErr::Timeout),
    }
}

/// Runs a device until `spec.stop` turns true (or, without `reconnect`, until its
/// connection ends). `ready` learns whether the first connect + join succeeded.
pub async fn run(ctx: Rc<Ctx>, mut spec: Spec, ready: Option<oneshot::Sender<bool>>) {
    let mut ready = ready;
    let mut tries: u32 = 0;
    let started = now_ns();
    loop {
        if spec.stop.is_stopped() {
            break;
        }
        match establish(&ctx, &spec).await {
            Ok((mut client, refs)) => {
                tries = 0;
                inc(&ctx.sh.c.established);
                if let Some(tx) = ready.take() {
                    let from = spec.intended_ns.unwrap_or(started);
                    ctx.sh
                        .join_lat
                        .borrow_mut()
                        .record(now_ns().saturating_sub(from));
                    let _ = tx.send(true);
                }
                inc(&ctx.sh.c.open);
                let end = conn_loop(&ctx, &mut client, &refs, &mut spec).await;
                dec(&ctx.sh.c.open);
                match end {
                    End::Stop => {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(200), client.ws.close(None))
                                .await;
                        break;
                    }
                    End::Lost(why) => {
                        inc(&ctx.sh.c.closes);
                        if matches!(spec.role, Role::Stalled { .. }) {
                            *ctx.sh.stalled_closed.borrow_mut().entry(why).or_default() += 1;
                        } else {
                            ctx.sh.error(why);
                        }
                    }
                }
            }
            Err(e) => {
                if ready.is_some() || !spec.reconnect {
                    inc(&ctx.sh.c.connect_failed);
                    ctx.sh.error(e.to_string());
                } else {
                    inc(&ctx.sh.reconnect_failures);
                }
                if let Some(tx) = ready.take() {
                    let _ = tx.send(false);
                }
            }
        }
        if !spec.reconnect {
            break;
        }
        tries += 1;
        tokio::select! {
            _ = tokio::time::sleep(js_backoff(tries)) => {}
            _ = spec.stop.wait() => break,
        }
    }
}

/// Delay of a connection's first heartbeat. The JS client sends it one interval after the
/// socket opens, so a fleet the generator connects within seconds heartbeats in bursts
/// (as a real fleet does after a hub restart). With `--heartbeat-phase spread`, device
/// `idx` gets a fixed phase spread evenly over one interval (golden-ratio sequence), as in
/// a fleet whose devices connected at different times.
fn first_heartbeat(ctx: &Ctx, idx: usize, every: Duration) -> Duration {
    if !ctx.set.heartbeat_spread {
        return every;
    }
    let frac = (idx as f64 * 0.618_033_988_749_895).fract();
    every.mul_f64(frac).max(Duration::from_millis(100))
}

/// The steady state of one connection.
async fn conn_loop(ctx: &Ctx, c: &mut Client, refs: &[u64], spec: &mut Spec) -> End {
    let sh = &ctx.sh;
    let hb_every = ctx.heartbeat();
    let mut hb_pending: Option<u64> = None;
    let hb = tokio::time::sleep(first_heartbeat(ctx, spec.idx, hb_every));
    tokio::pin!(hb);
    let Spec {
        role, stop, topics, ..
    } = spec;
    let topic0 = topics.first().cloned().unwrap_or_default();
    let relay_join_ref = topics.iter().position(|t| t == "relay").map(|i| refs[i]);
    let lock_join_ref = refs.first().copied();
    let (mut relay_cmds, mut push_cmds, mut stall, peer) = match role {
        Role::Relay { peer, cmds } => (Some(cmds), None, None, peer.as_str()),
        Role::Pusher { cmds } => (None, Some(cmds), None, ""),
        Role::Stalled { stall } => (None, None, Some(stall), ""),
        Role::Idle | Role::Subscriber => (None, None, None, ""),
    };
    let mut stalled = stall.as_ref().is_some_and(|s| *s.borrow());
    // A stalled reader's backlog is drained without being counted as deliveries.
    let discard = stall.is_some();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait() => return End::Stop,
            changed = async { stall.as_mut().expect("guarded").changed().await }, if stall.is_some() => {
                if changed.is_err() {
                    stall = None;
                    stalled = false;
                } else {
                    stalled = *stall.as_ref().expect("guarded").borrow();
                }
            }
            t = async { relay_cmds.as_mut().expect("guarded").recv().await }, if relay_cmds.is_some() => {
                let Some(t) = t else { relay_cmds = None; continue };
                sh.lag.borrow_mut().record(now_ns().saturating_sub(t));
                let payload = format!("{{\"target\":\"{peer}\",\"payload\":{{\"t\":{t}}}}}");
                if c.push(relay_join_ref, "relay", "send", &payload).await.is_err() {
                    return End::Lost("write failed".to_owned());
                }
                inc(&sh.c.sent);
            }
            cmd = async { push_cmds.as_mut().expect("guarded").recv().await }, if push_cmds.is_some() => {
                let Some((t, seq)) = cmd else { push_cmds = None; continue };
                sh.lag.borrow_mut().record(now_ns().saturating_sub(t));
                let payload = format!("{{\"t\":{t},\"seq\":{seq}}}");
                if c.push(lock_join_ref, &topic0, "event", &payload).await.is_err() {
                    return End::Lost("write failed".to_owned());
                }
                inc(&sh.c.sent);
            }
            msg = c.ws.next(), if !stalled => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return End::Lost(format!("read error: {e}")),
                    None => return End::Lost("closed by hub: eof".to_owned()),
                };
                let text = match &msg {
                    Message::Text(t) => t.as_str(),
                    Message::Close(_) => return End::Lost(reason_of_close(&msg)),
                    _ => continue,
                };
                let owned;
                let head = match wire::parse_head(text) {
                    Some(h) => h,
                    None => {
                        owned = wire::OwnedHead::parse(text);
                        match &owned {
                            Some(o) => o.head(),
                            None => {
                                sh.error("undecodable frame from hub");
                                continue;
                            }
                        }
                    }
                };
                if discard && head.event != "phx_reply" {
                    continue;
                }
                on_frame(ctx, head, &mut hb_pending, hb.as_mut(), hb_every);
            }
            _ = &mut hb => {
                if hb_pending.is_some() && !stalled {
                    inc(&sh.c.heartbeat_timeouts);
                    return End::Lost("heartbeat timeout".to_owned());
                }
                let r = c.make_ref();
                if c.send_text(wire::frame(None, r, "phoenix", "heartbeat", "{}")).await.is_err() {
                    return End::Lost("write failed".to_owned());
                }
                inc(&sh.c.heartbeats);
                hb_pending = (!stalled).then_some(r);
                // The JS client waits one interval for the reply; the next heartbeat goes
                // out one interval after the reply arrives.
                hb.as_mut().reset(Instant::now() + hb_every);
            }
        }
    }
}

fn on_frame(
    ctx: &Ctx,
    head: wire::Head<'_>,
    hb_pending: &mut Option<u64>,
    hb: std::pin::Pin<&mut tokio::time::Sleep>,
    hb_every: Duration,
) {
    let sh = &ctx.sh;
    match head.event {
        "packet" => {
            let now = now_ns();
            if let Some(t) = wire::num_after(head.payload, "\"t\":") {
                sh.delivery(t, now);
            }
            inc(&sh.c.recv);
            sh.c.last_recv_ns.set(now);
        }
        "event" if head.topic == "events" => {
            let now = now_ns();
            let t = wire::num_after(head.payload, "\"t\":");
            let seq = wire::num_after(head.payload, "\"seq\":");
            if let (Some(t), Some(seq)) = (t, seq) {
                sh.delivery(t, now);
                sh.event_delivered(seq, t, now);
            }
            inc(&sh.c.recv);
            sh.c.last_recv_ns.set(now);
        }
        "phx_reply" => {
            let r = head.ref_num();
            if r.is_some() && r == *hb_pending {
                *hb_pending = None;
                hb.reset(Instant::now() + hb_every);
            } else if wire::reply_ok(head.payload) {
                inc(&sh.c.replies_ok);
            } else {
                inc(&sh.c.replies_err);
                sh.error(format!(
                    "{} error reply: {}",
                    head.topic,
                    wire::reply_reason(head.payload)
                ));
            }
        }
        "phx_close" | "phx_error" => {
            sh.error(format!("{} on {}", head.event, head.topic));
        }
        _ => {}
    }
}
