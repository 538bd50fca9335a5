//! `homehub-bench`: a load generator for Phoenix Channels hubs.
//!
//! It simulates devices the way real Phoenix clients behave (V2 JSON frames, string refs
//! from a per-socket counter, join_ref == ref on joins, a heartbeat every 30 s, the JS
//! client's reconnect backoff) and runs the scenarios of issue 4 (S1–S7) against either a
//! hub it spawns itself (pinned to one CPU, fresh temporary database per scenario, with
//! the hub's CPU time and memory read from `/proc`) or any running hub (`--url`).
//!
//! The whole generator is one thread (a current-thread tokio runtime) pinned to one CPU,
//! one lightweight task per connection.

mod client;
mod ctx;
mod hub;
mod pace;
mod progress;
mod report;
mod scenarios;
mod session;
mod stats;
mod sys;
mod wire;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;

use anyhow::{Context, bail};
use clap::Parser;

use crate::client::Target;
use crate::ctx::{Ctx, Settings};
use crate::hub::HubSpec;
use crate::report::{Report, ScenarioResult};
use crate::scenarios::{broadcast, cluster, flood, idle, joins, relay, restart};

/// Load generator for Phoenix Channels hubs: runs the homehub benchmark scenarios (S1–S7)
/// against a hub it spawns (`--hub-bin`) or one already running (`--url`).
#[derive(Debug, Parser)]
#[command(name = "homehub-bench", version, args_override_self = true)]
struct Args {
    /// Spawn this hub binary for every scenario (temp database, pinned to --hub-cpu,
    /// CPU time and memory read from /proc).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "url",
        conflicts_with = "url"
    )]
    hub_bin: Option<PathBuf>,

    /// Load-test a running hub instead: its Phoenix socket URL as clients are configured,
    /// e.g. ws://127.0.0.1:4000/socket (`/websocket` is appended). No process metrics; S6
    /// is skipped.
    #[arg(long, value_name = "WS_URL")]
    url: Option<String>,

    /// Connections (N). Default 19,000, or 2,000 with --short.
    #[arg(short = 'n', long)]
    connections: Option<usize>,

    /// Scenarios to run, comma separated: S1,S2,S3,S4,S5,S5b,S6,S7,S8,S9 or `all`.
    #[arg(long, default_value = "all")]
    scenarios: String,

    /// Short mode: 2,000 connections and a few seconds per scenario (under a minute).
    #[arg(long)]
    short: bool,

    /// Loopback source addresses 127.0.0.1 … 127.0.0.N to spread connections over (avoids
    /// ephemeral-port exhaustion in reconnect storms). Ignored for non-loopback targets.
    #[arg(long, default_value_t = 8)]
    sources: u8,

    /// Write the JSON results here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Also write the markdown results table here.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,

    /// CPU the spawned hub is pinned to (`none` to leave it unpinned).
    #[arg(long, default_value = "0")]
    hub_cpu: String,

    /// CPU the generator pins itself to (`none` to leave it unpinned).
    #[arg(long, default_value = "1")]
    gen_cpu: String,

    /// Extra environment for the spawned hub, e.g. --hub-env RUST_LOG=homehub=warn
    /// (repeatable). DATABASE_URL, HOMEHUB_BIND and HOMEHUB_ADMIN_TOKEN are set by the
    /// generator.
    #[arg(long = "hub-env", value_name = "KEY=VALUE", value_parser = parse_kv)]
    hub_env: Vec<(String, String)>,

    /// Bearer token for the hub's /metrics with --url (slow-consumer close count in S5b).
    #[arg(long, env = "HOMEHUB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// Heartbeat interval of every simulated client (the JS client's default is 30 s).
    #[arg(long, default_value_t = 30.0)]
    heartbeat_secs: f64,

    /// First heartbeat of each device: `connect` (one interval after the socket opened,
    /// like the JS client; a fleet connected in a burst then heartbeats in a burst every
    /// interval, as after a hub restart) or `spread` (phases spread evenly over one
    /// interval, as in a fleet whose devices connected at different times).
    #[arg(long, default_value = "connect", value_parser = ["connect", "spread"])]
    heartbeat_phase: String,

    /// Connect + join timeout per device, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,

    /// Devices connecting at once while setting up fleets and in the closed-loop join
    /// passes of S2/S3.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,

    /// S1 idle window and S7 heartbeat-only window, seconds (default 60; 4 with --short).
    #[arg(long)]
    idle_secs: Option<f64>,

    /// S2 open-loop join rate per second.
    #[arg(long, default_value_t = 15_000.0)]
    join_rate: f64,

    /// S3 open-loop join rate per second (first-seen locks).
    #[arg(long, default_value_t = 5_000.0)]
    first_seen_rate: f64,

    /// S4 open-loop rate (msgs/s); default half the measured maximum.
    #[arg(long)]
    relay_rate: Option<f64>,

    /// S4 ladder's first rate (msgs/s).
    #[arg(long, default_value_t = 10_000.0)]
    relay_start_rate: f64,

    /// Seconds per ladder step (S4, S5) (default 3; 0.75 with --short).
    #[arg(long)]
    step_secs: Option<f64>,

    /// Seconds of the open-loop runs at a fixed rate (S4, S5) (default 10; 2 with --short).
    #[arg(long)]
    steady_secs: Option<f64>,

    /// S5 single pushes timed to the last delivery (default 20; 8 with --short).
    #[arg(long)]
    rounds: Option<usize>,

    /// S5/S5b open-loop rate in deliveries/s; default half the S5 maximum.
    #[arg(long)]
    deliveries_rate: Option<f64>,

    /// S5 ladder's first rate (deliveries/s).
    #[arg(long, default_value_t = 100_000.0)]
    deliveries_start_rate: f64,

    /// S5/S5b: lock devices pushing the events, round-robin (default: enough that each
    /// pushes at most 50 events/s at 2,000,000 deliveries/s, as hubs limit messages per
    /// socket; homehub's default is 100/s).
    #[arg(long)]
    pushers: Option<usize>,

    /// S5b: percentage of subscribers that stop reading.
    #[arg(long, default_value_t = 1.0)]
    stall_percent: f64,

    /// S5b: SO_RCVBUF of the stalled subscribers' sockets, bytes.
    #[arg(long, default_value_t = 4096)]
    stall_rcvbuf: u32,

    /// S5b: seconds the stalled subscribers do not read (default 60; 4 with --short).
    #[arg(long)]
    stall_secs: Option<f64>,

    /// S7: seconds of soak (default 1800; 6 with --short).
    #[arg(long)]
    soak_secs: Option<f64>,

    /// S7: relay messages per second during the soak.
    #[arg(long, default_value_t = 1000.0)]
    soak_relay_rate: f64,

    /// S7: relay pairs carrying the soak traffic (at most N/4).
    #[arg(long, default_value_t = 500)]
    soak_pairs: usize,

    /// Before each scenario, wait up to this many seconds for the machine to be idle (other
    /// processes distort the figures on a shared machine). 0: do not wait.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    wait_idle: f64,

    /// Run a scenario again (up to this many extra times) when other processes used more
    /// than 15 % of a core during its measured windows; the least disturbed run is kept.
    #[arg(long, default_value_t = 0, value_name = "N")]
    retry_disturbed: u32,

    /// S8: concurrent failed Bester logins, each from its own loopback address.
    #[arg(long, default_value_t = 2_000)]
    flood: usize,

    /// S8: kill the hub when its RSS passes this many MiB (a hub without login limits
    /// could otherwise take the machine's memory).
    #[arg(long, default_value_t = 4_096)]
    flood_rss_limit_mib: u64,

    /// S9: the nats-server binary the two cluster nodes run on.
    #[arg(long, env = "HOMEHUB_TEST_NATS_BIN", value_name = "PATH")]
    nats_bin: Option<PathBuf>,

    /// S9: the PostgreSQL database the two nodes share (its tables are created if needed).
    #[arg(
        long,
        env = "HOMEHUB_TEST_POSTGRES_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    cluster_database_url: Option<String>,

    /// S9: open-loop relay rate of the same-node and cross-node runs (msgs/s).
    #[arg(long, default_value_t = 5_000.0)]
    cluster_rate: f64,

    /// S9: relay pairs of each kind (default 500; 100 with --short).
    #[arg(long)]
    cluster_pairs: Option<usize>,

    /// S9: `events` subscribers on each node (default N/2, at most 5,000).
    #[arg(long)]
    cluster_subscribers: Option<usize>,

    /// S9: events broadcast to the subscribers of both nodes.
    #[arg(long, default_value_t = 50)]
    cluster_events: u64,

    /// Free text recorded with the results, e.g. the hub's commit.
    #[arg(long)]
    label: Option<String>,

    /// Keep the temporary directory (hub databases and logs).
    #[arg(long)]
    keep_tmp: bool,

    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn parse_cpu(s: &str) -> anyhow::Result<Option<usize>> {
    if s.eq_ignore_ascii_case("none") {
        Ok(None)
    } else {
        Ok(Some(s.parse().context("CPU must be a number or `none`")?))
    }
}

fn settings(a: &Args) -> anyhow::Result<Settings> {
    let short = a.short;
    let pick =
        |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if short { quick } else { full });
    let connections = a.connections.unwrap_or(if short { 2_000 } else { 19_000 });
    if connections < 4 {
        bail!("need at least 4 connections");
    }
    let scenarios: Vec<String> = if a.scenarios.eq_ignore_ascii_case("all") {
        scenarios::ALL.iter().map(|s| s.to_string()).collect()
    } else {
        a.scenarios
            .split(',')
            .map(|s| {
                let s = s.trim();
                scenarios::ALL
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(s))
                    .map(|k| k.to_string())
                    .with_context(|| format!("unknown scenario {s:?}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    Ok(Settings {
        connections,
        short,
        scenarios,
        heartbeat_secs: a.heartbeat_secs,
        heartbeat_spread: a.heartbeat_phase == "spread",
        timeout_ms: a.timeout_ms,
        concurrency: a.concurrency,
        idle_secs: pick(a.idle_secs, 60.0, 4.0),
        join_rate: a.join_rate,
        first_seen_rate: a.first_seen_rate,
        relay_rate: a.relay_rate,
        relay_start_rate: a.relay_start_rate,
        step_secs: pick(a.step_secs, 3.0, 0.75),
        steady_secs: pick(a.steady_secs, 10.0, 2.0),
        rounds: a.rounds.unwrap_or(if short { 8 } else { 20 }),
        deliveries_rate: a.deliveries_rate,
        deliveries_start_rate: a.deliveries_start_rate,
        pushers: a
            .pushers
            .unwrap_or_else(|| (2_000_000.0 / connections as f64 / 50.0).ceil() as usize)
            .max(1),
        stall_percent: a.stall_percent,
        stall_rcvbuf: a.stall_rcvbuf,
        stall_secs: pick(a.stall_secs, 60.0, 4.0),
        soak_secs: pick(a.soak_secs, 1800.0, 6.0),
        soak_relay_rate: a.soak_relay_rate,
        soak_pairs: a.soak_pairs.min(connections / 4),
        sources: a.sources as usize,
        hub_cpu: if a.hub_bin.is_some() {
            parse_cpu(&a.hub_cpu)?
        } else {
            None
        },
        gen_cpu: parse_cpu(&a.gen_cpu)?,
        flood: a.flood.clamp(1, 60_000),
        flood_rss_limit_mib: a.flood_rss_limit_mib,
        nats_bin: a.nats_bin.clone(),
        cluster_database_url: a.cluster_database_url.clone().filter(|u| !u.is_empty()),
        cluster_rate: a.cluster_rate,
        cluster_pairs: a.cluster_pairs.unwrap_or(if short { 100 } else { 500 }),
        cluster_subscribers: a
            .cluster_subscribers
            .unwrap_or((connections / 2).min(5_000)),
        cluster_events: a.cluster_events,
    })
}

/// `ws://host:port/socket` → the target (path gets `/websocket` like the JS client adds).
async fn url_target(url: &str, sources: usize) -> anyhow::Result<Target> {
    let rest = url.strip_prefix("ws://").context(
        "--url must start with ws:// (TLS is not supported; run against the plain listener)",
    )?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/socket"),
    };
    let path = path.trim_end_matches('/');
    let path = if path.ends_with("/websocket") {
        path.to_owned()
    } else {
        format!("{path}/websocket")
    };
    let host_port = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let addr: SocketAddr = tokio::net::lookup_host(&host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .with_context(|| format!("{host_port} has no address"))?;
    let sources = if addr.ip().is_loopback() && addr.is_ipv4() {
        loopback_sources(sources)
    } else {
        Vec::new()
    };
    Ok(Target {
        addr,
        host: host.to_owned(),
        path,
        sources,
    })
}

fn loopback_sources(n: usize) -> Vec<Ipv4Addr> {
    (1..=n.clamp(1, 250) as u8)
        .map(|i| Ipv4Addr::new(127, 0, 0, i))
        .collect()
}

/// Other CPU use (percent of one core) above which a measurement counts as disturbed.
const DISTURBED_PCT: f64 = 15.0;

/// Runs one scenario on its own hub; returns its result and the highest CPU use by other
/// processes seen in its measured windows.
async fn run_scenario(
    ctx: &Rc<Ctx>,
    id: &str,
    wait_idle: f64,
) -> anyhow::Result<(ScenarioResult, f64)> {
    if wait_idle > 0.0 {
        let waited = ctx.wait_machine_quiet(wait_idle).await;
        if waited > 3.0 {
            progress::say(format!("   waited {waited:.0} s for an idle machine"));
        }
    }
    progress::say(format!("== {id}"));
    ctx.max_other.set(0.0);
    ctx.max_steal.set(0.0);
    ctx.net_total.set((0, 0));
    let t0 = stats::now_ns();
    let res = match id {
        "S1" => idle::s1(ctx).await,
        "S2" => joins::s2(ctx).await,
        "S3" => joins::s3(ctx).await,
        "S4" => relay::s4(ctx).await,
        "S5" => broadcast::s5(ctx).await,
        "S5b" => broadcast::s5b(ctx).await,
        "S6" => restart::s6(ctx).await,
        "S7" => idle::s7(ctx).await,
        "S8" => flood::s8(ctx).await,
        "S9" => cluster::s9(ctx).await,
        other => bail!("unknown scenario {other}"),
    };
    let mut res = res.unwrap_or_else(|e| {
        let mut r = ScenarioResult::new(id, "");
        r.error = Some(format!("{e:#}"));
        r
    });
    res.secs = stats::round1((stats::now_ns() - t0) as f64 / 1e9);
    let other = ctx.max_other.get();
    let steal = ctx.max_steal.get();
    res.put("max_other_cpu_pct", stats::round1(other));
    res.put("max_steal_pct", stats::round1(steal));
    let (retrans, drops) = ctx.net_total.get();
    res.put("tcp_retransmits", retrans);
    res.put("loopback_backlog_drops", drops);
    if retrans > 0 && id != "S5b" {
        res.note(format!(
            "{retrans} TCP segments were retransmitted during measured windows ({drops} packets dropped by full per-CPU backlog queues, net.core.netdev_max_backlog). On loopback most are tail-loss probes, sent when a busy receiver delayed its ACK, whose original had arrived (the receiver answers with a DSACK; see TcpExtTCPLossProbes and TcpExtTCPDSACKRecv in `nstat`); a segment really lost costs its message ≥ 200 ms"
        ));
    }
    if other > DISTURBED_PCT {
        res.note(format!(
            "the machine was busy: other load used up to {other:.0} % of a core during a measured window, hypervisor steal up to {steal:.0} % (figures are pessimistic; see usage.other_cpu_pct and usage.steal_pct in the JSON)"
        ));
    }
    ctx.set_phase(format!("{id} teardown"));
    ctx.stop_all().await;
    ctx.stop_hub().await;
    ctx.set_phase("");
    for c in &res.checks {
        progress::say(format!(
            "  {id} [{}] {}: {}",
            match c.pass {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "n/a",
            },
            c.target,
            c.measured
        ));
    }
    Ok((res, other))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let nofile = sys::raise_nofile();
    stats::epoch();
    let set = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(cpu) = set.gen_cpu
        && let Err(e) = sys::pin_current_thread(cpu)
    {
        eprintln!("warning: cannot pin the generator to CPU {cpu}: {e}");
    }
    if (set.connections as u64) + 64 > nofile {
        eprintln!(
            "warning: {} connections but the open-file limit is {nofile}",
            set.connections
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, run(args, set, nofile)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, set: Settings, nofile: u64) -> anyhow::Result<ExitCode> {
    let machine = sys::machine(nofile);
    let tmp_root = std::env::temp_dir().join(format!("homehub-bench-{}", std::process::id()));
    let (target, hub_spec, admin_token, target_desc) = match (&args.hub_bin, &args.url) {
        (Some(bin), _) => {
            let bin = std::fs::canonicalize(bin)
                .with_context(|| format!("hub binary {}", bin.display()))?;
            let token = format!(
                "bench-{:x}-{:x}",
                std::process::id(),
                stats::now_ns() ^ 0x5eed
            );
            let spec = HubSpec {
                bin: bin.clone(),
                cpu: set.hub_cpu,
                env: args.hub_env.clone(),
                admin_token: token.clone(),
            };
            let target = Target {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                host: String::new(),
                path: "/socket/websocket".to_owned(),
                sources: loopback_sources(set.sources),
            };
            (
                target,
                Some(spec),
                Some(token),
                format!("spawned {}", bin.display()),
            )
        }
        (None, Some(url)) => (
            url_target(url, set.sources).await?,
            None,
            args.admin_token.clone(),
            url.clone(),
        ),
        (None, None) => bail!("give --hub-bin or --url"),
    };
    let ctx = Rc::new(Ctx::new(
        set.clone(),
        target,
        hub_spec,
        admin_token,
        tmp_root.clone(),
    ));
    if !args.quiet {
        tokio::task::spawn_local(progress::run(ctx.clone()));
    }
    progress::say(format!(
        "homehub-bench: {} connections, scenarios {}, target {target_desc}, run id {}",
        set.connections,
        set.scenarios.join(","),
        ctx.run_id
    ));
    let started_at_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut results = Vec::new();
    let mut errored = false;
    for id in &set.scenarios {
        let mut kept: Option<(ScenarioResult, f64, ctx::CarrySnapshot)> = None;
        for attempt in 0..=args.retry_disturbed {
            if attempt > 0 {
                progress::say(format!(
                    "   {id} was disturbed by other load; attempt {} of {}",
                    attempt + 1,
                    args.retry_disturbed + 1
                ));
            }
            let (res, other) = run_scenario(&ctx, id, args.wait_idle).await?;
            errored |= res.error.is_some();
            let better = kept.as_ref().is_none_or(|(_, o, _)| other < *o);
            if better {
                kept = Some((res, other, ctx.carry.snapshot()));
            }
            if other <= DISTURBED_PCT {
                break;
            }
        }
        if let Some((res, _, carry)) = kept {
            ctx.carry.restore(carry);
            results.push(res);
        }
    }
    let report = Report {
        generator: "homehub-bench",
        version: env!("CARGO_PKG_VERSION"),
        started_at_unix,
        target: target_desc,
        label: args.label.clone(),
        machine,
        settings: set,
        scenarios: results,
    };
    let json = serde_json::to_string_pretty(&report)?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, format!("{json}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => println!("{json}"),
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report::markdown(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    progress::say(report::summary(&report));
    if !args.keep_tmp {
        let _ = std::fs::remove_dir_all(&tmp_root);
    } else {
        progress::say(format!(
            "hub databases and logs kept in {}",
            tmp_root.display()
        ));
    }
    Ok(if errored {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
