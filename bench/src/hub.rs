//! The hub under test when the generator spawns it: a temporary directory with its SQLite
//! file and log, the process pinned to one CPU, its readiness line, SIGKILL and restart,
//! and `/metrics` scraping.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::stats::now_ns;

/// How to start a hub.
#[derive(Debug, Clone)]
pub struct HubSpec {
    pub bin: PathBuf,
    pub cpu: Option<usize>,
    pub env: Vec<(String, String)>,
    pub admin_token: String,
}

/// A running hub process.
pub struct HubProc {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// When the readiness line arrived (ns since the epoch).
    pub up_ns: u64,
}

const READY_PREFIX: &str = "homehub listening on http://";

impl HubProc {
    /// Starts a hub on `bind` (`127.0.0.1:0` for any port) with its database in `dir`, and
    /// waits for `homehub listening on http://ADDR` on its stdout.
    pub async fn start(spec: &HubSpec, dir: &Path, bind: &str) -> anyhow::Result<HubProc> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("hub.log"))
            .context("creating the hub log")?;
        let mut cmd = Command::new(&spec.bin);
        cmd.current_dir(dir)
            .env("DATABASE_URL", dir.join("hub.db"))
            .env("HOMEHUB_BIND", bind)
            .env("HOMEHUB_ADMIN_TOKEN", &spec.admin_token)
            // homehub's Bester door listens on a fixed port by default; benchmarks do not
            // use it and a fixed port would collide with other hubs on the machine.
            .env("HOMEHUB_BESTER_BIND", "")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        pin_to(&mut cmd, spec.cpu);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("hub exited at once"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.trim().strip_prefix(READY_PREFIX) {
                    return Ok::<_, anyhow::Error>(Some(addr.trim().parse::<SocketAddr>()?));
                }
            }
            Ok(None)
        })
        .await;
        let addr = match ready {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) => bail!(
                "the hub exited before listening; see {}",
                dir.join("hub.log").display()
            ),
            Ok(Err(e)) => return Err(e.context("reading the hub's stdout")),
            Err(_) => bail!("the hub did not print its listening line within 60 s"),
        };
        let up_ns = now_ns();
        // Keep draining stdout so the hub never blocks on a full pipe.
        tokio::task::spawn_local(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(HubProc {
            child,
            pid,
            addr,
            dir: dir.to_owned(),
            up_ns,
        })
    }

    /// SIGKILL, then reap.
    pub async fn kill9(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Pins the process `cmd` will start to `cpu` (if any).
pub fn pin_to(cmd: &mut Command, cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        // SAFETY: sched_setaffinity is async-signal-safe; nothing is allocated here.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Reads counters from the hub's Prometheus endpoint (`GET /metrics`, bearer token).
pub async fn scrape_metrics(
    addr: SocketAddr,
    host: &str,
    token: Option<&str>,
) -> anyhow::Result<Vec<(String, f64)>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await??;
    if !body.starts_with("HTTP/1.1 200") {
        bail!(
            "GET /metrics: {}",
            body.lines().next().unwrap_or("no answer")
        );
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}
