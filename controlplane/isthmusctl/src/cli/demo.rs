//! `isthmusctl demo`: runs `examples/two-meshes` (a copy, in a temporary folder), drives traffic
//! through it and reports what that proved. Exits 0 only if every step passed; stops everything
//! it started either way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::runner::Runner;
use crate::runner::http::get_via;

/// The example bundled with the repository this binary was built from.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/two-meshes");

const IMPORTED: &str = "ratings.bookinfo.svc.green-imports.local:9080";
const CLIENT: &str = "spiffe://red.local/ns/shop/sa/client";

#[derive(Debug, Args)]
pub struct DemoCommand {
    /// The example to run (meshes red and green, as in examples/two-meshes).
    #[arg(long, default_value = EXAMPLE)]
    pub example: PathBuf,
    /// Keep the logs and state here instead of a temporary folder that is removed at the end.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// One step of the report.
#[derive(Debug)]
struct Step {
    title: &'static str,
    outcome: anyhow::Result<String>,
}

impl DemoCommand {
    pub async fn run(self) -> anyhow::Result<()> {
        // Before the spinner: cargo's own progress shows while the binaries build.
        super::build::ensure_binaries(&|line| eprintln!("isthmusctl demo: {line}"))?;
        let started = tokio::time::Instant::now();
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        let say = |msg: &str| bar.set_message(msg.to_owned());

        let temp = tempfile::Builder::new().prefix("isthmus-demo-").tempdir()?;
        let base = self.keep.clone().unwrap_or_else(|| temp.path().to_owned());
        let example = base.join("example");
        copy_dir(&self.example, &example)
            .with_context(|| format!("cannot copy {}", self.example.display()))?;
        let mut runner = Runner::start(&example, &base.join("state"), &say).await?;
        bar.suspend(|| {
            println!(
                "started meshes red and green: {} processes (logs in {})",
                runner.run_file().processes.len(),
                base.join("state").display()
            )
        });

        // Ctrl-C stops the steps, never the clean-up.
        let steps = tokio::select! {
            steps = run_steps(&mut runner, &example, &bar) => Some(steps),
            _ = tokio::signal::ctrl_c() => None,
        };
        say("stopping everything");
        runner.stop().await;
        bar.finish_and_clear();
        let Some(steps) = steps else {
            anyhow::bail!("interrupted; every process stopped");
        };
        let failed: Vec<&str> = steps
            .iter()
            .filter(|s| s.outcome.is_err())
            .map(|s| s.title)
            .collect();
        println!(
            "\n{} of {} steps passed in {:.0} s; every process stopped.",
            steps.len() - failed.len(),
            steps.len(),
            started.elapsed().as_secs_f64()
        );
        anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join("; "));
        Ok(())
    }
}

async fn run_steps(runner: &mut Runner, example: &Path, bar: &ProgressBar) -> Vec<Step> {
    let mut steps = Vec::new();
    for (title, step) in [
        ("in-mesh call with mTLS", 0),
        ("cross-mesh call, caller identity seen by green", 1),
        ("authorization on the caller's identity", 2),
        ("services not exported, or not imported, are refused", 3),
        ("export withdrawn and restored", 4),
        ("failover to the peer and back", 5),
    ] {
        bar.set_message(title);
        let outcome = match step {
            0 => in_mesh(runner).await,
            1 => cross_mesh(runner).await,
            2 => authorization(runner).await,
            3 => refused(runner).await,
            4 => withdraw_and_restore(runner, example).await,
            _ => failover(runner).await,
        };
        // Printed around the spinner (and plainly when stdout is not a terminal).
        bar.suspend(|| {
            println!(
                "{} {title}: {}",
                if outcome.is_ok() { "PASS" } else { "FAIL" },
                match &outcome {
                    Ok(detail) => detail.clone(),
                    Err(e) => format!("{e:#}"),
                }
            )
        });
        steps.push(Step { title, outcome });
    }
    steps
}

/// A call from red's `workload` (namespace/name) through its sidecar; (status, echo JSON).
async fn call(runner: &Runner, workload: &str, host: &str) -> anyhow::Result<(u16, Value)> {
    let w = runner
        .workload("red", workload)
        .with_context(|| format!("red has no workload {workload}"))?;
    let (status, body) = get_via(&w.outbound().to_string(), host, "/").await?;
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    ))
}

/// Calls from red's `shop/client` until `done` holds, for at most `limit`; the last answer
/// either way.
async fn call_until(
    runner: &Runner,
    host: &str,
    limit: Duration,
    done: impl Fn(u16, &Value) -> bool,
) -> (bool, String, Duration) {
    let start = tokio::time::Instant::now();
    loop {
        let answer = call(runner, "shop/client", host).await;
        let last = match &answer {
            Ok((status, body)) if done(*status, body) => {
                return (true, describe(*status, body), start.elapsed());
            }
            Ok((status, body)) => describe(*status, body),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > limit {
            return (false, last, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn describe(status: u16, body: &Value) -> String {
    match body["name"].as_str() {
        Some(name) => format!("{status} from {name}"),
        None => format!("{status} {}", body.as_str().unwrap_or_default().trim())
            .trim_end()
            .to_owned(),
    }
}

fn xfcc(body: &Value) -> &str {
    body["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
}

/// Calls `host` from red's client until it answers 200 (for at most `limit`), then checks
/// that the destination's sidecar verified the client: (last answer, time to the first 200,
/// the `x-forwarded-client-cert` it forwarded).
async fn reach_as_client(
    runner: &Runner,
    host: &str,
    limit: Duration,
) -> anyhow::Result<(String, Duration, String)> {
    let (ok, last, took) = call_until(runner, host, limit, |s, _| s == 200).await;
    anyhow::ensure!(ok, "red's client cannot reach {host}: {last}");
    let (_, body) = call(runner, "shop/client", host).await?;
    let seen = xfcc(&body).to_owned();
    anyhow::ensure!(
        seen.contains(&format!("URI={CLIENT}")),
        "the destination's sidecar did not verify red's client (x-forwarded-client-cert: {seen:?})"
    );
    Ok((last, took, seen))
}

async fn in_mesh(runner: &Runner) -> anyhow::Result<String> {
    let (last, _, _) = reach_as_client(
        runner,
        "frontend.shop.svc.cluster.local:9080",
        Duration::from_secs(30),
    )
    .await?;
    Ok(format!(
        "client -> frontend: {last}, frontend's sidecar verified {CLIENT}"
    ))
}

async fn cross_mesh(runner: &Runner) -> anyhow::Result<String> {
    let (last, took, seen) = reach_as_client(runner, IMPORTED, Duration::from_secs(45)).await?;
    anyhow::ensure!(
        seen.contains("By=spiffe://green.local/"),
        "the answer did not come from green's sidecar (x-forwarded-client-cert: {seen:?})"
    );
    Ok(format!(
        "{IMPORTED}: {last} (first answer after {:.1} s); green's sidecar saw {CLIENT} through both gateways",
        took.as_secs_f64()
    ))
}

async fn authorization(runner: &Runner) -> anyhow::Result<String> {
    let (status, body) = call(runner, "shop/frontend", IMPORTED).await?;
    anyhow::ensure!(
        status == 403,
        "red's frontend (not allowed by green's policy) got {}",
        describe(status, &body)
    );
    Ok(
        "green's AuthorizationPolicy allows red's client (200) and refuses red's frontend (403)"
            .into(),
    )
}

async fn refused(runner: &Runner) -> anyhow::Result<String> {
    let mut seen = Vec::new();
    for (host, why) in [
        (
            "details.bookinfo.svc.green-imports.local:9080",
            "imported, not exported",
        ),
        (
            "reviews.bookinfo.svc.green-imports.local:9080",
            "exported, not imported",
        ),
    ] {
        let (status, body) = call(runner, "shop/client", host).await?;
        anyhow::ensure!(
            status == 404,
            "{host} ({why}) answered {}",
            describe(status, &body)
        );
        seen.push(format!(
            "{} ({why}): 404",
            host.split('.').next().unwrap_or(host)
        ));
    }
    Ok(seen.join(", "))
}

async fn withdraw_and_restore(runner: &mut Runner, example: &Path) -> anyhow::Result<String> {
    let file = example.join("green/federation.yaml");
    let original = std::fs::read_to_string(&file)?;
    let rule = "  - type: NameSelector\n    nameSelector: {namespace: bookinfo, name: ratings}\n";
    anyhow::ensure!(
        original.contains(rule),
        "{} has no export rule for ratings",
        file.display()
    );
    std::fs::write(&file, original.replace(rule, ""))?;
    runner.reload()?;
    let (gone, last, withdrawn) =
        call_until(runner, IMPORTED, Duration::from_secs(10), |s, _| s != 200).await;
    anyhow::ensure!(
        gone,
        "still reachable 10 s after the export rule was removed: {last}"
    );
    let refused = last;
    std::fs::write(&file, &original)?;
    runner.reload()?;
    let (back, last, restored) =
        call_until(runner, IMPORTED, Duration::from_secs(10), |s, _| s == 200).await;
    anyhow::ensure!(
        back,
        "not reachable 10 s after the export rule was restored: {last}"
    );
    Ok(format!(
        "unreachable {:.2} s after the rule was removed ({refused}), reachable again {:.2} s after it was restored",
        withdrawn.as_secs_f64(),
        restored.as_secs_f64()
    ))
}

const INVENTORY: &str = "inventory.shop.svc.cluster.local:9080";

/// Calls the inventory from red's client until red's own inventory answers (30 s at most).
async fn until_red_inventory_answers(runner: &Runner) -> (bool, String, Duration) {
    call_until(
        runner,
        INVENTORY,
        Duration::from_secs(30),
        |status, body| status == 200 && body["name"] == "inventory-red",
    )
    .await
}

async fn failover(runner: &mut Runner) -> anyhow::Result<String> {
    let (ok, last, _) = until_red_inventory_answers(runner).await;
    anyhow::ensure!(ok, "red's own inventory does not answer: {last}");
    runner.stop_app("red", "shop/inventory").await?;
    let mut failures = 0;
    let start = tokio::time::Instant::now();
    loop {
        let answer = call(runner, "shop/client", INVENTORY).await;
        if let Ok((200, body)) = &answer
            && body["name"] == "inventory-green"
        {
            break;
        }
        failures += 1;
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "no failover to green within 20 s ({failures} failed requests)"
        );
    }
    let over = start.elapsed();
    runner.start_app("red", "shop/inventory")?;
    let (ok, last, back) = until_red_inventory_answers(runner).await;
    anyhow::ensure!(ok, "traffic did not come back to red's inventory: {last}");
    Ok(format!(
        "red's inventory stopped: green answered after {failures} failed request(s) ({:.2} s); restarted: red answered again after {:.1} s",
        over.as_secs_f64(),
        back.as_secs_f64()
    ))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
