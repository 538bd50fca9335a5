//! Results: the JSON document, the markdown table and the human summary.

use std::fmt::Write as _;

use serde::Serialize;

use crate::ctx::Settings;
use crate::sys::Machine;

/// One target of the table with the measured figure beside it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub target: String,
    pub measured: String,
    /// `None`: not judged (e.g. no process metrics against `--url`).
    pub pass: Option<bool>,
}

impl Check {
    pub fn new(target: impl Into<String>, measured: impl Into<String>, pass: Option<bool>) -> Self {
        Check {
            target: target.into(),
            measured: measured.into(),
            pass,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub id: String,
    pub title: String,
    pub secs: f64,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    pub metrics: serde_json::Value,
    pub error: Option<String>,
}

impl ScenarioResult {
    pub fn new(id: &str, title: &str) -> Self {
        ScenarioResult {
            id: id.to_owned(),
            title: title.to_owned(),
            secs: 0.0,
            checks: Vec::new(),
            notes: Vec::new(),
            metrics: serde_json::Value::Object(Default::default()),
            error: None,
        }
    }

    pub fn check(&mut self, target: &str, measured: impl Into<String>, pass: Option<bool>) {
        self.checks.push(Check::new(target, measured, pass));
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn put(&mut self, key: &str, v: impl Serialize) {
        if let serde_json::Value::Object(m) = &mut self.metrics {
            m.insert(
                key.to_owned(),
                serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
            );
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub generator: &'static str,
    pub version: &'static str,
    pub started_at_unix: u64,
    pub target: String,
    pub label: Option<String>,
    pub machine: Machine,
    pub settings: Settings,
    pub scenarios: Vec<ScenarioResult>,
}

fn verdict(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "pass",
        Some(false) => "**FAIL**",
        None => "n/a",
    }
}

/// The markdown table: scenario, target, measured, pass/fail.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "# homehub-bench results\n\n- target: {}{}\n- machine: {} CPUs online, {}, {} RAM, Linux {}\n- connections (N): {}{}\n- pinning: hub on CPU {}, generator on CPU {}\n- load average at start: {}\n",
        r.target,
        r.label
            .as_ref()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default(),
        m.cpus_online,
        m.cpu_model,
        m.mem_total,
        m.kernel,
        r.settings.connections,
        if r.settings.short {
            " (short mode)"
        } else {
            ""
        },
        r.settings.hub_cpu.map_or("-".to_owned(), |c| c.to_string()),
        r.settings.gen_cpu.map_or("-".to_owned(), |c| c.to_string()),
        m.loadavg_at_start,
    );
    let _ = writeln!(s, "| scenario | target | measured | result |");
    let _ = writeln!(s, "|---|---|---|---|");
    for sc in &r.scenarios {
        if let Some(e) = &sc.error {
            let _ = writeln!(s, "| {} {} | | error: {} | **FAIL** |", sc.id, sc.title, e);
        }
        for c in &sc.checks {
            let _ = writeln!(
                s,
                "| {} {} | {} | {} | {} |",
                sc.id,
                sc.title,
                c.target,
                c.measured,
                verdict(c.pass)
            );
        }
    }
    let notes: Vec<_> = r
        .scenarios
        .iter()
        .flat_map(|sc| sc.notes.iter().map(move |n| (sc.id.as_str(), n)))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes:\n");
        for (id, n) in notes {
            let _ = writeln!(s, "- {id}: {n}");
        }
    }
    s
}

/// The human summary printed at the end of a run.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n== homehub-bench: {} connections against {}",
        r.settings.connections, r.target
    );
    for sc in &r.scenarios {
        let _ = writeln!(s, "{} {} ({:.1} s)", sc.id, sc.title, sc.secs);
        if let Some(e) = &sc.error {
            let _ = writeln!(s, "    ERROR: {e}");
        }
        for c in &sc.checks {
            let v = match c.pass {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "  - ",
            };
            let _ = writeln!(s, "  [{v}] {:<48} measured {}", c.target, c.measured);
        }
        for n in &sc.notes {
            let _ = writeln!(s, "    note: {n}");
        }
    }
    s
}
