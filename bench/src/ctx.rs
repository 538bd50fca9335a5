//! The run's shared context: settings, the target (spawned hub or `--url`), the counters,
//! the fleet of device tasks, and measuring windows over hub and generator CPU/memory.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::Target;
use crate::hub::{HubProc, HubSpec, scrape_metrics};
use crate::session::{self, Spec, Stop};
use crate::stats::{Shared, now_ns, round1};
use crate::sys::{self, CpuMark};

/// Settings after `--short` presets and defaults are applied.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub connections: usize,
    pub short: bool,
    pub scenarios: Vec<String>,
    pub heartbeat_secs: f64,
    /// Spread the fleet's heartbeat phases over one interval (else: one interval after
    /// each socket opened, in lockstep after a storm).
    pub heartbeat_spread: bool,
    pub timeout_ms: u64,
    pub concurrency: usize,
    pub idle_secs: f64,
    pub join_rate: f64,
    pub first_seen_rate: f64,
    pub relay_rate: Option<f64>,
    pub relay_start_rate: f64,
    pub step_secs: f64,
    pub steady_secs: f64,
    pub rounds: usize,
    pub deliveries_rate: Option<f64>,
    pub deliveries_start_rate: f64,
    /// Lock devices pushing S5/S5b events (round-robin), so no single socket exceeds a
    /// hub's per-socket message rate limit.
    pub pushers: usize,
    pub stall_percent: f64,
    pub stall_rcvbuf: u32,
    pub stall_secs: f64,
    pub soak_secs: f64,
    pub soak_relay_rate: f64,
    pub soak_pairs: usize,
    pub sources: usize,
    pub hub_cpu: Option<usize>,
    pub gen_cpu: Option<usize>,
    /// S8: concurrent failed Bester logins.
    pub flood: usize,
    /// S8: the hub is killed if its RSS passes this (MiB), so an unprotected hub cannot
    /// take the machine.
    pub flood_rss_limit_mib: u64,
    /// S9: the nats-server binary the cluster runs on.
    pub nats_bin: Option<std::path::PathBuf>,
    /// S9: the PostgreSQL database both nodes use (not recorded: it may hold a password).
    #[serde(skip)]
    pub cluster_database_url: Option<String>,
    /// S9: relay rate (msgs/s) of the same-node and cross-node runs.
    pub cluster_rate: f64,
    /// S9: relay pairs of each kind.
    pub cluster_pairs: usize,
    /// S9: `events` subscribers on each node.
    pub cluster_subscribers: usize,
    /// S9: events broadcast to them.
    pub cluster_events: u64,
}

/// Results one scenario hands to a later one (S5 → S5b).
#[derive(Default)]
pub struct Carry {
    pub s5_steady_rate: Cell<Option<f64>>,
    pub s5_steady_p99_ms: Cell<Option<f64>>,
    pub s5_max_rate: Cell<Option<f64>>,
}

/// The values of a [`Carry`], to restore the ones of a kept attempt.
pub type CarrySnapshot = (Option<f64>, Option<f64>, Option<f64>);

impl Carry {
    pub fn snapshot(&self) -> CarrySnapshot {
        (
            self.s5_steady_rate.get(),
            self.s5_steady_p99_ms.get(),
            self.s5_max_rate.get(),
        )
    }

    pub fn restore(&self, s: CarrySnapshot) {
        self.s5_steady_rate.set(s.0);
        self.s5_steady_p99_ms.set(s.1);
        self.s5_max_rate.set(s.2);
    }
}

pub struct Ctx {
    pub set: Settings,
    pub sh: Shared,
    pub carry: Carry,
    /// Prefix of every socket name and lock serial of this run (unique per run).
    pub run_id: String,
    target: RefCell<Rc<Target>>,
    pub hub_spec: Option<HubSpec>,
    pub hub: RefCell<Option<HubProc>>,
    /// Bearer token for `/metrics` (ours for a spawned hub, `--admin-token` otherwise).
    pub admin_token: Option<String>,
    pub tmp_root: PathBuf,
    pub phase: RefCell<String>,
    /// Dropping these stops every device task.
    stop_txs: RefCell<Vec<oneshot::Sender<()>>>,
    tasks: RefCell<Vec<JoinHandle<()>>>,
    hubs_started: Cell<u32>,
    /// Highest CPU use by other processes seen in a measured window of this scenario.
    pub max_other: Rc<Cell<f64>>,
    /// Highest hypervisor steal seen in a measured window of this scenario.
    pub max_steal: Rc<Cell<f64>>,
    /// TCP retransmits and backlog drops summed over this scenario's measured windows.
    pub net_total: Rc<Cell<(u64, u64)>>,
    /// Processes of the system under test besides the hub (S9: the second node and
    /// nats-server), whose CPU is not "other load".
    pub also_measured: RefCell<Vec<u32>>,
}

/// How establishing a fleet went.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FleetOut {
    pub ok: u64,
    pub failed: u64,
    /// First start to last ready, seconds.
    pub secs: f64,
    pub per_sec: f64,
}

/// CPU and memory of the hub and the generator over a window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    pub secs: f64,
    pub hub_cpu_pct: Option<f64>,
    pub hub_cpu_secs: Option<f64>,
    pub hub_rss_start_mib: Option<f64>,
    pub hub_rss_end_mib: Option<f64>,
    pub gen_cpu_pct: f64,
    /// Busy time of each CPU (all processes, kernel included), percent.
    pub cpu_busy_pct: Vec<f64>,
    /// CPU used outside the hub and the generator (other processes, softirq), in percent
    /// of one core: a disturbed measurement shows here.
    pub other_cpu_pct: f64,
    /// Of that, time the hypervisor gave to other VMs (steal), percent of one core.
    pub steal_pct: f64,
    /// TCP retransmits and loopback backlog drops during the window (whole machine).
    pub net: sys::NetDrops,
}

pub struct Meter {
    hub_pid: Option<u32>,
    hub: Option<CpuMark>,
    /// [`Ctx::also_measured`] at the start.
    also: Vec<(u32, Option<CpuMark>)>,
    gen_mark: Option<CpuMark>,
    start_ns: u64,
    rss0: Option<u64>,
    busy0: Vec<u64>,
    steal0: u64,
    net0: sys::NetDrops,
    max_other: Rc<Cell<f64>>,
    max_steal: Rc<Cell<f64>>,
    net_total: Rc<Cell<(u64, u64)>>,
}

impl Meter {
    pub fn finish(&self) -> Usage {
        let hub_end = self.hub_pid.and_then(CpuMark::take);
        let gen_end = CpuMark::take(std::process::id());
        let mib = |k: u64| round1(k as f64 / 1024.0);
        let secs = (now_ns() - self.start_ns) as f64 / 1e9;
        let busy1 = sys::busy_ticks();
        let tck = sys::clk_tck() as f64;
        let busy: Vec<f64> = self
            .busy0
            .iter()
            .zip(&busy1)
            .map(|(a, b)| 100.0 * b.saturating_sub(*a) as f64 / tck / secs.max(1e-9))
            .collect();
        let hub_cpu = self
            .hub
            .zip(hub_end)
            .map(|(a, b)| a.pct_until(&b))
            .unwrap_or(0.0);
        let gen_cpu = self
            .gen_mark
            .zip(gen_end)
            .map(|(a, b)| a.pct_until(&b))
            .unwrap_or(0.0);
        let also_cpu: f64 = self
            .also
            .iter()
            .filter_map(|(pid, m)| m.zip(CpuMark::take(*pid)))
            .map(|(a, b)| a.pct_until(&b))
            .sum();
        let other = busy.first().copied().unwrap_or(0.0) - hub_cpu - also_cpu - gen_cpu;
        let steal =
            100.0 * sys::steal_ticks().saturating_sub(self.steal0) as f64 / tck / secs.max(1e-9);
        if secs >= 0.5 {
            self.max_other.set(self.max_other.get().max(other));
            self.max_steal.set(self.max_steal.get().max(steal));
        }
        let net1 = sys::net_drops();
        let net = sys::NetDrops {
            tcp_retrans_segs: net1
                .tcp_retrans_segs
                .saturating_sub(self.net0.tcp_retrans_segs),
            backlog_drops: net1.backlog_drops.saturating_sub(self.net0.backlog_drops),
        };
        let (r, d) = self.net_total.get();
        self.net_total
            .set((r + net.tcp_retrans_segs, d + net.backlog_drops));
        Usage {
            net,
            cpu_busy_pct: busy.iter().skip(1).map(|v| round1(*v)).collect(),
            other_cpu_pct: round1(other.max(0.0)),
            steal_pct: round1(steal),
            secs,
            hub_cpu_pct: self.hub.zip(hub_end).map(|(a, b)| round1(a.pct_until(&b))),
            hub_cpu_secs: self
                .hub
                .zip(hub_end)
                .map(|(a, b)| (a.cpu_secs_until(&b) * 100.0).round() / 100.0),
            hub_rss_start_mib: self.rss0.map(mib),
            hub_rss_end_mib: self.hub_pid.and_then(sys::rss_kib).map(mib),
            gen_cpu_pct: round1(gen_cpu),
        }
    }
}

impl Ctx {
    pub fn new(
        set: Settings,
        target: Target,
        hub_spec: Option<HubSpec>,
        admin_token: Option<String>,
        tmp_root: PathBuf,
    ) -> Ctx {
        let run_id = format!("{:x}", (now_since_unix_ms() & 0xff_ffff_ffff));
        Ctx {
            set,
            sh: Shared::default(),
            carry: Carry::default(),
            run_id,
            target: RefCell::new(Rc::new(target)),
            hub_spec,
            hub: RefCell::new(None),
            admin_token,
            tmp_root,
            phase: RefCell::new(String::new()),
            stop_txs: RefCell::new(Vec::new()),
            tasks: RefCell::new(Vec::new()),
            hubs_started: Cell::new(0),
            max_other: Rc::default(),
            max_steal: Rc::default(),
            net_total: Rc::default(),
            also_measured: RefCell::default(),
        }
    }

    pub fn target(&self) -> Rc<Target> {
        self.target.borrow().clone()
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.set.timeout_ms)
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.set.heartbeat_secs)
    }

    pub fn set_phase(&self, p: impl Into<String>) {
        *self.phase.borrow_mut() = p.into();
    }

    /// A device name unique to this run: `<run>-<tag>-<i>`.
    pub fn name(&self, tag: &str, i: usize) -> String {
        format!("b{}-{tag}-{i}", self.run_id)
    }

    /// A lock serial unique to this run.
    pub fn serial(&self, tag: &str, i: usize) -> String {
        format!("SN-{}-{tag}-{i}", self.run_id)
    }

    pub fn stop_rx(&self) -> Stop {
        let (tx, rx) = oneshot::channel();
        self.stop_txs.borrow_mut().push(tx);
        Stop::new(rx)
    }

    pub fn hub_pid(&self) -> Option<u32> {
        self.hub.borrow().as_ref().map(|h| h.pid)
    }

    pub fn hub_rss_kib(&self) -> Option<u64> {
        self.hub_pid().and_then(sys::rss_kib)
    }

    pub fn meter(&self) -> Meter {
        let hub_pid = self.hub_pid();
        Meter {
            hub_pid,
            hub: hub_pid.and_then(CpuMark::take),
            also: self
                .also_measured
                .borrow()
                .iter()
                .map(|p| (*p, CpuMark::take(*p)))
                .collect(),
            gen_mark: CpuMark::take(std::process::id()),
            start_ns: now_ns(),
            rss0: hub_pid.and_then(sys::rss_kib),
            busy0: sys::busy_ticks(),
            steal0: sys::steal_ticks(),
            net0: sys::net_drops(),
            max_other: self.max_other.clone(),
            max_steal: self.max_steal.clone(),
            net_total: self.net_total.clone(),
        }
    }

    /// Starts one device task.
    pub fn spawn(self: &Rc<Self>, spec: Spec, ready: Option<oneshot::Sender<bool>>) {
        let h = tokio::task::spawn_local(session::run(self.clone(), spec, ready));
        self.tasks.borrow_mut().push(h);
    }

    /// Establishes `specs` closed-loop, `concurrency` at a time (each device stays
    /// connected afterwards). Join latencies go to `sh.join_lat`.
    pub async fn fleet(self: &Rc<Self>, specs: Vec<Spec>, concurrency: usize) -> FleetOut {
        let queue = Rc::new(RefCell::new(VecDeque::from(specs)));
        let ok = Rc::new(Cell::new(0u64));
        let failed = Rc::new(Cell::new(0u64));
        let last = Rc::new(Cell::new(0u64));
        let start = now_ns();
        let mut workers = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (ctx, queue, ok, failed, last) = (
                self.clone(),
                queue.clone(),
                ok.clone(),
                failed.clone(),
                last.clone(),
            );
            workers.push(tokio::task::spawn_local(async move {
                loop {
                    let next = queue.borrow_mut().pop_front();
                    let Some(spec) = next else { break };
                    let (tx, rx) = oneshot::channel();
                    ctx.spawn(spec, Some(tx));
                    if rx.await.unwrap_or(false) {
                        ok.set(ok.get() + 1);
                    } else {
                        failed.set(failed.get() + 1);
                    }
                    last.set(now_ns());
                }
            }));
        }
        for w in workers {
            let _ = w.await;
        }
        fleet_out(ok.get(), failed.get(), start, last.get())
    }

    /// Starts `specs` open-loop at `rate` per second (each spec's `intended_ns` is set to
    /// its scheduled start) and waits for every one to be ready or fail.
    pub async fn fleet_open_loop(self: &Rc<Self>, specs: Vec<Spec>, rate: f64) -> FleetOut {
        let count = specs.len() as u64;
        let mut specs = specs.into_iter();
        let mut waits = Vec::with_capacity(count as usize);
        let start = now_ns() + 2_000_000;
        crate::pace::open_loop_count(rate, start, count, |_, t| {
            if let Some(mut spec) = specs.next() {
                spec.intended_ns = Some(t);
                let (tx, rx) = oneshot::channel();
                self.spawn(spec, Some(tx));
                waits.push(rx);
            }
        })
        .await;
        let (mut ok, mut failed, mut last) = (0, 0, start);
        for rx in waits {
            if rx.await.unwrap_or(false) {
                ok += 1;
            } else {
                failed += 1;
            }
            last = last.max(now_ns());
        }
        fleet_out(ok, failed, start, last)
    }

    /// Stops every device task (they send a WebSocket close) and waits for them briefly.
    pub async fn stop_all(&self) {
        self.stop_txs.borrow_mut().clear();
        let deadline = now_ns() + 5_000_000_000;
        while self.sh.c.open.get() > 0 && now_ns() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for h in self.tasks.borrow_mut().drain(..) {
            h.abort();
        }
        // Let aborted tasks drop their sockets.
        tokio::task::yield_now().await;
        self.sh.c.open.set(0);
    }

    /// Whether a hub is spawned by us (process metrics available).
    pub fn spawns_hub(&self) -> bool {
        self.hub_spec.is_some()
    }

    /// Starts a fresh hub (new temp directory and database) for a scenario.
    pub async fn start_hub(&self, tag: &str) -> anyhow::Result<()> {
        self.start_hub_with(tag, &[]).await
    }

    /// [`Ctx::start_hub`] with more environment for the hub (after `--hub-env`).
    pub async fn start_hub_with(&self, tag: &str, env: &[(String, String)]) -> anyhow::Result<()> {
        let Some(spec) = &self.hub_spec else {
            return Ok(());
        };
        let mut spec = spec.clone();
        spec.env.extend(env.iter().cloned());
        let spec = &spec;
        let n = self.hubs_started.get() + 1;
        self.hubs_started.set(n);
        let dir = self.tmp_root.join(format!("{n:02}-{tag}"));
        let hub = HubProc::start(spec, &dir, "127.0.0.1:0").await?;
        self.set_hub(hub);
        Ok(())
    }

    fn set_hub(&self, hub: HubProc) {
        let mut t = (*self.target()).clone();
        t.addr = hub.addr;
        t.host = hub.addr.to_string();
        *self.target.borrow_mut() = Rc::new(t);
        *self.hub.borrow_mut() = Some(hub);
    }

    /// SIGKILLs the hub and starts it again on the same address and database (S6).
    /// Returns (kill time, listening time) in ns since the epoch.
    pub async fn restart_hub_hard(&self) -> anyhow::Result<(u64, u64)> {
        let spec = self
            .hub_spec
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no hub to restart"))?;
        let mut old = self
            .hub
            .borrow_mut()
            .take()
            .ok_or_else(|| anyhow::anyhow!("hub not running"))?;
        let killed = now_ns();
        old.kill9().await;
        let hub = HubProc::start(spec, &old.dir, &old.addr.to_string()).await?;
        let up = hub.up_ns;
        self.set_hub(hub);
        Ok((killed, up))
    }

    /// Stops the hub of the finished scenario (SIGKILL: its temp database is thrown away).
    pub async fn stop_hub(&self) {
        let hub = self.hub.borrow_mut().take();
        if let Some(mut hub) = hub {
            hub.kill9().await;
        }
    }

    /// Waits until the hub's CPU use stays under ~3 % for half a second (at most
    /// `max_secs`); against `--url` targets just sleeps one second.
    pub async fn wait_hub_quiet(&self, max_secs: f64) {
        let Some(pid) = self.hub_pid() else {
            crate::pace::sleep_secs(1.0).await;
            return;
        };
        let deadline = now_ns() + (max_secs * 1e9) as u64;
        let mut prev = CpuMark::take(pid);
        while now_ns() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cur = CpuMark::take(pid);
            if let (Some(a), Some(b)) = (prev, cur)
                && a.pct_until(&b) < 3.0
            {
                return;
            }
            prev = cur;
        }
    }

    /// Waits (at most `max_secs`) until the machine is idle: all CPUs together busy less
    /// than 10 % of one core for two seconds in a row. Returns the seconds waited.
    pub async fn wait_machine_quiet(&self, max_secs: f64) -> f64 {
        let t0 = now_ns();
        let deadline = t0 + (max_secs * 1e9) as u64;
        let mut calm = 0;
        let mut prev = sys::busy_ticks();
        while now_ns() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cur = sys::busy_ticks();
            let busy = match (prev.first(), cur.first()) {
                (Some(a), Some(b)) => 100.0 * b.saturating_sub(*a) as f64 / sys::clk_tck() as f64,
                _ => 0.0,
            };
            prev = cur;
            if busy < 10.0 {
                calm += 1;
                if calm >= 2 {
                    break;
                }
            } else {
                calm = 0;
                self.set_phase(format!("waiting for an idle machine (busy {busy:.0} %)"));
            }
        }
        (now_ns() - t0) as f64 / 1e9
    }

    /// A counter from the hub's `/metrics`, when reachable.
    pub async fn hub_metric(&self, name: &str) -> Option<f64> {
        let t = self.target();
        let m = scrape_metrics(t.addr, &t.host, self.admin_token.as_deref())
            .await
            .ok()?;
        m.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

fn fleet_out(ok: u64, failed: u64, start: u64, last: u64) -> FleetOut {
    let secs = (last.saturating_sub(start)) as f64 / 1e9;
    FleetOut {
        ok,
        failed,
        secs: (secs * 1000.0).round() / 1000.0,
        per_sec: if secs > 0.0 {
            (ok as f64 / secs).round()
        } else {
            0.0
        },
    }
}

fn now_since_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
