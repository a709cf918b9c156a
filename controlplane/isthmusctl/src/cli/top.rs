//! `isthmusctl top [--mesh M] [--watch] [--interval SECS] [-o json]`: the golden signals of
//! every service and every peer of a running `isthmusctl up`, from the sidecars' own metrics
//! (`/stats/prometheus` on each admin port `STATE/run.json` lists), with no Prometheus:
//! `linkerd viz stat` for a local run.
//!
//! Every sidecar is scraped twice, `--interval` apart, and the counters' increases between the
//! two scrapes are the rates (`top/signals.rs`, as `rate()` takes them: resets included). Two
//! views:
//!
//! - services: per (mesh, service), as the service's own sidecars count it
//!   (`reporter="destination"`), all callers and then the callers of each mesh
//!   (`source_mesh`): requests per second, success rate (not 5xx), p50 / p99 latency from the
//!   `istio_request_duration_milliseconds` buckets;
//! - peers: what crosses between each mesh and each other mesh, outbound as our callers' sidecars
//!   count it (`reporter="source"`, `destination_mesh` another mesh), inbound as our services'
//!   sidecars count it (`reporter="destination"`, `source_mesh` another mesh).
//!
//! A mesh label holding a mesh's trust domain (the labels' fallback when a proxy does not
//! know the mesh's name) is read as that mesh's name, from `run.json`.
//!
//! `--watch` scrapes again every interval and redraws until Ctrl-C (each window is the time
//! since the previous scrape).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::time::Instant;

use crate::runner::RunFile;
use crate::runner::run_file::default_state;

pub mod exposition;
pub mod signals;
#[cfg(test)]
mod tests;

use signals::{PeerRow, ServiceRow, Signals, Snapshot, Window};

#[derive(Debug, Args)]
pub struct TopCommand {
    /// Only this mesh: its services and its traffic with its peers (only its sidecars are
    /// scraped).
    #[arg(long, value_name = "MESH")]
    pub mesh: Option<String>,
    /// Scrape again and redraw every interval, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between the two scrapes the rates are taken over (and between redraws with
    /// --watch); fractions allowed, 0.1 at least.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_interval)]
    pub interval: Duration,
    /// `table`, or `json` for scripts (with --watch, one JSON document per line).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The state folder of `isthmusctl up`.
    #[arg(long, env = "ISTHMUS_UP_STATE", default_value_os_t = default_state())]
    pub state: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&seconds) {
        return Err(format!("{text}: between 0.1 and 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// One sidecar to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub mesh: String,
    /// `namespace/name` of its workload.
    pub workload: String,
    pub admin: SocketAddr,
}

/// Every sidecar of the run (of `mesh` only, when given).
pub fn targets(run: &RunFile, mesh: Option<&str>) -> anyhow::Result<Vec<Target>> {
    if let Some(mesh) = mesh {
        run.mesh(mesh)?;
    }
    Ok(run
        .meshes
        .iter()
        .filter(|m| mesh.is_none_or(|name| m.name == name))
        .flat_map(|m| {
            m.workloads.iter().map(|w| Target {
                mesh: m.name.clone(),
                workload: format!("{}/{}", w.namespace, w.name),
                admin: w.admin,
            })
        })
        .collect())
}

/// One scrape of one sidecar: when it answered, and what it said.
#[derive(Debug, Clone)]
struct Scrape {
    at: Instant,
    snapshot: Snapshot,
}

async fn scrape(admin: SocketAddr) -> anyhow::Result<Scrape> {
    let addr = admin.to_string();
    let (status, body) = crate::runner::http::get(&addr, "/stats/prometheus", &addr).await?;
    let at = Instant::now();
    anyhow::ensure!(
        (200..300).contains(&status),
        "/stats/prometheus: HTTP {status}"
    );
    let samples = exposition::parse(&body).context("/stats/prometheus")?;
    Ok(Scrape {
        at,
        snapshot: Snapshot::from_samples(samples),
    })
}

/// Every target at once; the results in the targets' order.
async fn scrape_all(targets: &[Target]) -> Vec<Result<Scrape, String>> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, target) in targets.iter().enumerate() {
        let admin = target.admin;
        tasks.spawn(async move { (i, scrape(admin).await.map_err(|e| format!("{e:#}"))) });
    }
    let mut results: Vec<Result<Scrape, String>> =
        vec![Err("not scraped".to_owned()); targets.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, result)) = joined {
            results[i] = result;
        }
    }
    results
}

/// What `top` shows: `-o json` is this document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `--mesh`, if given.
    pub mesh: Option<String>,
    /// The time between the two scrapes, averaged over the sidecars that answered both.
    pub window_seconds: f64,
    /// How many sidecars answered both scrapes.
    pub sidecars: usize,
    pub services: Vec<ServiceRow>,
    pub peers: Vec<PeerRow>,
    /// Sidecars that did not answer, or answered something unreadable.
    pub warnings: Vec<String>,
}

impl Report {
    /// The rows of `windows` (of `mesh` only, when given).
    pub fn new(
        mesh: Option<&str>,
        windows: &[Window],
        window_seconds: f64,
        warnings: Vec<String>,
    ) -> Self {
        let mut services = signals::services(windows);
        let mut peers = signals::peers(windows);
        if let Some(mesh) = mesh {
            services.retain(|row| row.mesh == mesh);
            peers.retain(|row| row.mesh == mesh);
        }
        Self {
            mesh: mesh.map(str::to_owned),
            window_seconds,
            sidecars: windows.len(),
            services,
            peers,
            warnings,
        }
    }
}

/// The report over two rounds of scrapes of `targets`; `names`: each mesh's name by its trust
/// domain.
fn compare(
    mesh: Option<&str>,
    names: &BTreeMap<String, String>,
    targets: &[Target],
    before: &[Result<Scrape, String>],
    after: &[Result<Scrape, String>],
) -> Report {
    let mut windows = Vec::new();
    let mut seconds = Vec::new();
    let mut warnings = Vec::new();
    for ((target, before), after) in targets.iter().zip(before).zip(after) {
        match (before, after) {
            (Ok(before), Ok(after)) => {
                let elapsed = after.at.duration_since(before.at).as_secs_f64();
                seconds.push(elapsed);
                let mut window =
                    Window::between(&target.mesh, &before.snapshot, &after.snapshot, elapsed);
                window.name_meshes(names);
                windows.push(window);
            }
            (Err(e), _) | (_, Err(e)) => warnings.push(format!(
                "sidecar of {}/{} (admin {}): {e}",
                target.mesh, target.workload, target.admin
            )),
        }
    }
    let window_seconds = if seconds.is_empty() {
        0.0
    } else {
        seconds.iter().sum::<f64>() / seconds.len() as f64
    };
    Report::new(mesh, &windows, window_seconds, warnings)
}

impl TopCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        let run = RunFile::read(&self.state)?;
        let targets = targets(&run, self.mesh.as_deref())?;
        anyhow::ensure!(!targets.is_empty(), "no sidecar to scrape in this run");
        let names: BTreeMap<String, String> = run
            .meshes
            .iter()
            .map(|m| (m.trust_domain.clone(), m.name.clone()))
            .collect();
        if !self.watch {
            let report = self.once(&names, &targets).await;
            anyhow::ensure!(
                report.sidecars > 0,
                "no sidecar answered:\n  {}",
                report.warnings.join("\n  ")
            );
            match self.output {
                Output::Table => print!("{}", render(&report)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            return Ok(());
        }
        let mut interrupt =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            result = self.watch(&names, &targets) => result,
            _ = interrupt.recv() => Ok(()),
        }
    }

    async fn once(&self, names: &BTreeMap<String, String>, targets: &[Target]) -> Report {
        let start = Instant::now();
        let before = scrape_all(targets).await;
        tokio::time::sleep_until(start + self.interval).await;
        let after = scrape_all(targets).await;
        compare(self.mesh.as_deref(), names, targets, &before, &after)
    }

    async fn watch(
        &self,
        names: &BTreeMap<String, String>,
        targets: &[Target],
    ) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut before = scrape_all(targets).await;
        let terminal = std::io::stdout().is_terminal();
        loop {
            tick.tick().await;
            let after = scrape_all(targets).await;
            let report = compare(self.mesh.as_deref(), names, targets, &before, &after);
            match self.output {
                Output::Json => println!("{}", serde_json::to_string(&report)?),
                Output::Table if terminal => print!(
                    "\x1b[H\x1b[2J{}\n(every {:.1} s; Ctrl-C to stop)\n",
                    render(&report),
                    self.interval.as_secs_f64()
                ),
                Output::Table => println!("{}", render(&report)),
            }
            before = after;
        }
    }
}

/// The report as two tables, `linkerd viz stat` style.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "SERVICES: as their own sidecars count them, over {:.1} s, {} sidecar{}",
        report.window_seconds,
        report.sidecars,
        if report.sidecars == 1 { "" } else { "s" }
    );
    let mut rows = vec![header(&["MESH", "SERVICE", "FROM"])];
    for service in &report.services {
        if service.by_source_mesh.len() > 1 {
            rows.push(row(
                &[&service.mesh, &service.service, "(all)"],
                &service.signals,
            ));
        }
        for source in &service.by_source_mesh {
            rows.push(row(
                &[&service.mesh, &service.service, &source.source_mesh],
                &source.signals,
            ));
        }
    }
    if report.services.is_empty() {
        let _ = writeln!(
            out,
            "(no request metrics: no request since the sidecars started, or sidecars without Istio's istio_requests_total)"
        );
    } else {
        out.push_str(&table(&rows));
    }
    let _ = writeln!(
        out,
        "\nPEERS: traffic crossing between meshes (outbound: as our callers' sidecars count it; inbound: as our services' sidecars do)"
    );
    let mut rows = vec![header(&["MESH", "DIRECTION", "PEER", "SERVICE"])];
    for peer in &report.peers {
        let direction = peer.direction.as_str();
        if peer.services.len() > 1 {
            rows.push(row(
                &[&peer.mesh, direction, &peer.peer, "(all)"],
                &peer.signals,
            ));
        }
        for service in &peer.services {
            rows.push(row(
                &[&peer.mesh, direction, &peer.peer, &service.service],
                &service.signals,
            ));
        }
    }
    if report.peers.is_empty() {
        let _ = writeln!(out, "(no traffic between meshes)");
    } else {
        out.push_str(&table(&rows));
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}

const SIGNAL_COLUMNS: [&str; 4] = ["SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P99"];

fn header(first: &[&str]) -> Vec<String> {
    first
        .iter()
        .chain(SIGNAL_COLUMNS.iter())
        .map(|s| (*s).to_owned())
        .collect()
}

fn row(first: &[&str], signals: &Signals) -> Vec<String> {
    let mut cells: Vec<String> = first.iter().map(|s| (*s).to_owned()).collect();
    cells.push(
        signals
            .success_rate
            .map_or_else(|| "-".to_owned(), |rate| format!("{:.2}%", rate * 100.0)),
    );
    cells.push(format!("{:.1}rps", signals.requests_per_second));
    cells.push(latency(signals.p50_ms));
    cells.push(latency(signals.p99_ms));
    cells
}

/// Milliseconds, with the precision that matters at their size.
pub fn latency(ms: Option<f64>) -> String {
    match ms {
        None => "-".to_owned(),
        Some(ms) if ms >= 1000.0 => format!("{:.2}s", ms / 1000.0),
        Some(ms) if ms >= 100.0 => format!("{ms:.0}ms"),
        Some(ms) if ms >= 10.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.2}ms"),
    }
}

/// Columns padded to their widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
