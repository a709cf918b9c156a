//! One run: every mesh's `isthmusd` first (their roots are needed by the others' config), then
//! each mesh's rendered configuration, its gateways and sidecars (waited on until `/ready`),
//! then the workloads' commands. Any failure on the way stops what was started and says why.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hash::{Hash as _, Hasher as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::description::{Description, read_description};
use super::plan::{ADMIN_PORT, GatewayPlan, MeshPlan, Plan, WorkloadPlan, plan, render};
use super::processes::{Exited, ProcessSpec, Supervisor, tail};
use super::run_file::{
    GatewayEntry, MeshEntry, ProcessEntry, RunFile, WorkloadEntry, process_alive,
};
use super::{http, our_binary};
use isthmus_controlplane::config::{ConfigError, load_text};
use isthmus_controlplane::daemon::Addresses;

/// How long proxies get to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// The port, on `127.<block>.0.1`, a run holds for its lifetime so that no other run takes the
/// same address block.
const BLOCK_LOCK_PORT: u16 = 15099;

/// A running mesh's control plane.
#[derive(Debug, Clone)]
pub struct MeshRuntime {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub debug: SocketAddr,
    pub xds: SocketAddr,
    pub federation: Option<SocketAddr>,
    pub root_pem: String,
}

/// Everything one `isthmusctl up` (or demo) started.
#[derive(Debug)]
pub struct Runner {
    pub description: Description,
    pub plan: Plan,
    pub state: PathBuf,
    pub meshes: Vec<MeshRuntime>,
    supervisor: Supervisor,
    /// The run's address block, `127.<block>.0.0/16`, held by `_block_lock`.
    block: u8,
    _block_lock: TcpListener,
    /// What every `isthmusd` is started with beyond the description (`up`'s flags).
    pub options: RunOptions,
}

/// `isthmusctl up`'s settings for every mesh's `isthmusd`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOptions {
    /// The OTLP/gRPC collector (`host:port`) the proxies send spans to
    /// (`--tracing-otlp-endpoint`); no tracing without it.
    pub otlp_endpoint: Option<String>,
    /// Percentage of requests that start a sampled trace (`--tracing-sampling`); isthmusd's
    /// default (1) without it.
    pub trace_sampling: Option<f64>,
}

impl RunOptions {
    /// `isthmusd`'s flags for `mesh`: its name (`--mesh-id`, always: the `Mesh` document's),
    /// and tracing when asked for.
    pub fn isthmusd_args(&self, mesh: &str) -> Vec<String> {
        let mut args = vec!["--mesh-id".to_owned(), mesh.to_owned()];
        if let Some(endpoint) = &self.otlp_endpoint {
            args.extend(["--tracing-otlp-endpoint".to_owned(), endpoint.clone()]);
        }
        if let Some(percent) = self.trace_sampling {
            args.extend(["--tracing-sampling".to_owned(), percent.to_string()]);
        }
        args
    }
}

/// The problems of a description, one per line, as an error.
pub fn located(errors: &[ConfigError]) -> anyhow::Error {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    anyhow::anyhow!("{} problem(s):\n  {}", errors.len(), lines.join("\n  "))
}

impl Runner {
    /// Reads `dir` and starts every mesh it describes, keeping state under `state`; `progress`
    /// hears each step. On failure nothing is left running.
    pub async fn start(dir: &Path, state: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Self> {
        Self::start_with(dir, state, RunOptions::default(), progress).await
    }

    /// [`Runner::start`], every `isthmusd` started with `options`.
    pub async fn start_with(
        dir: &Path,
        state: &Path,
        options: RunOptions,
        progress: &dyn Fn(&str),
    ) -> anyhow::Result<Self> {
        let description = read_description(dir).map_err(|e| located(&e))?;
        std::fs::create_dir_all(state)
            .with_context(|| format!("cannot create the state folder {}", state.display()))?;
        if let Ok(previous) = RunFile::read(state) {
            bail!(
                "another `isthmusctl up` (pid {}) is running with the state folder {}; stop it, or pass another --state",
                previous.pid,
                state.display()
            );
        }
        let (block, lock) = reserve_block(state)?;
        let plan = plan(&description, block);
        check_ports(&plan)?;
        let mut runner = Self {
            description,
            plan,
            state: state.to_owned(),
            meshes: Vec::new(),
            supervisor: Supervisor::new(state.display().to_string()),
            block,
            _block_lock: lock,
            options,
        };
        match runner.bring_up(progress).await {
            Ok(()) => Ok(runner),
            Err(e) => {
                progress("stopping what was started");
                runner.stop().await;
                Err(e)
            }
        }
    }

    async fn bring_up(&mut self, progress: &dyn Fn(&str)) -> anyhow::Result<()> {
        for mesh in self.plan.meshes.clone() {
            progress(&format!(
                "{}: starting isthmusd ({})",
                mesh.name, mesh.trust_domain
            ));
            let runtime = self.start_isthmusd(&mesh).await?;
            self.meshes.push(runtime);
        }
        for index in 0..self.meshes.len() {
            progress(&format!(
                "{}: writing its configuration",
                self.plan.meshes[index].name
            ));
            for warning in self.write_config(index)? {
                progress(&format!("warning: {warning}"));
            }
        }
        let mut proxies = Vec::new();
        for (index, mesh) in self.plan.meshes.clone().iter().enumerate() {
            for gateway in &mesh.gateways {
                self.start_gateway(index, mesh, gateway)?;
                proxies.push((
                    format!("{}: gateway {}", mesh.name, gateway.name),
                    gateway.admin(),
                ));
            }
            for workload in &mesh.workloads {
                self.start_sidecar(index, mesh, workload)?;
                proxies.push((
                    format!(
                        "{}: {} {}",
                        mesh.name,
                        if workload.workload.ingress {
                            "ingress gateway"
                        } else {
                            "sidecar of"
                        },
                        workload.workload.key()
                    ),
                    workload.admin(),
                ));
            }
        }
        progress(&format!(
            "waiting for {} proxies to be ready",
            proxies.len()
        ));
        self.wait_ready(&proxies).await?;
        for mesh in self.plan.meshes.clone() {
            for workload in mesh
                .workloads
                .iter()
                .filter(|w| !w.workload.command.is_empty())
            {
                progress(&format!(
                    "{}: starting {}",
                    mesh.name,
                    workload.workload.key()
                ));
                self.supervisor
                    .start(app_spec(&self.state, &mesh, workload))?;
            }
        }
        // A command that cannot run usually says so at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.fail_on_exit()?;
        let run = self.run_file();
        // Before run.json, whose presence tells waiting tests that everything is in place.
        super::prometheus::write(&self.state, &run)?;
        run.write(&self.state)?;
        Ok(())
    }

    async fn start_isthmusd(&mut self, mesh: &MeshPlan) -> anyhow::Result<MeshRuntime> {
        let root = self.state.join(&mesh.name);
        let config_dir = root.join("config");
        let state_dir = root.join("state");
        std::fs::create_dir_all(&config_dir)?;
        std::fs::create_dir_all(&state_dir)?;
        let _ = std::fs::remove_file(Addresses::path(&state_dir));
        let log = root.join("isthmusd.log");
        let name = format!("{}/isthmusd", mesh.name);
        let args = [
            "--config-dir",
            &config_dir.display().to_string(),
            "--state-dir",
            &state_dir.display().to_string(),
            "--trust-domain",
            &mesh.trust_domain,
            "--grpc-addr",
            "127.0.0.1:0",
            "--debug-addr",
            "127.0.0.1:0",
            "--federation-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec();
        let args = [args, self.options.isthmusd_args(&mesh.name)].concat();
        self.supervisor.start(ProcessSpec {
            name: name.clone(),
            program: our_binary("isthmusd"),
            args,
            env: BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())]),
            log: log.clone(),
        })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let addresses = loop {
            self.fail_on_exit()?;
            // Written once every port is bound (atomically: a read sees all of it or nothing).
            if let Ok(addresses) = Addresses::read(&state_dir) {
                break addresses;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{name} did not start within 20 s:\n{}", tail(&log, 20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let root_file = state_dir.join("root-cert.pem");
        let root_pem = std::fs::read_to_string(&root_file)
            .with_context(|| format!("{name}: cannot read its root {}", root_file.display()))?;
        Ok(MeshRuntime {
            debug: addresses.debug,
            // Proxies take their certificate and configuration on the mTLS port, with tokens.
            xds: addresses.grpc,
            federation: addresses.federation,
            config_dir,
            state_dir,
            root_pem,
        })
    }

    fn roots(&self) -> BTreeMap<String, String> {
        self.plan
            .meshes
            .iter()
            .zip(&self.meshes)
            .map(|(plan, runtime)| (plan.trust_domain.clone(), runtime.root_pem.clone()))
            .collect()
    }

    /// Renders mesh `index`'s configuration, checks it whole, and replaces its config dir.
    fn write_config(&self, index: usize) -> anyhow::Result<Vec<String>> {
        let (files, warnings) = render(&self.description, &self.plan, index, &self.roots());
        let mesh = &self.description.meshes[index];
        let combined: String = files.iter().map(|f| f.text.as_str()).collect();
        load_text(&combined, &mesh.folder).map_err(|e| located(&e))?;
        let config_dir = &self.meshes[index].config_dir;
        let keep: Vec<PathBuf> = files.iter().map(|f| config_dir.join(&f.relative)).collect();
        for entry in std::fs::read_dir(config_dir)?.filter_map(Result::ok) {
            if !keep.contains(&entry.path()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for (file, path) in files.iter().zip(&keep) {
            let tmp = path.with_extension("yaml.tmp");
            std::fs::write(&tmp, &file.text)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, path)?;
        }
        Ok(warnings)
    }

    fn start_gateway(
        &mut self,
        index: usize,
        mesh: &MeshPlan,
        g: &GatewayPlan,
    ) -> anyhow::Result<()> {
        let args = ["--role", "federation", "--node-id", &g.node_id()].map(str::to_owned);
        self.start_proxy(
            index,
            mesh,
            &format!("gateway/{}", g.name),
            (&g.namespace, &g.service_account()),
            g.admin(),
            args.to_vec(),
        )
    }

    fn start_sidecar(
        &mut self,
        index: usize,
        mesh: &MeshPlan,
        w: &WorkloadPlan,
    ) -> anyhow::Result<()> {
        let mut args = vec!["--node-id".to_owned(), w.node_id()];
        if w.workload.ingress {
            args.extend(["--role".to_owned(), "ingress".to_owned()]);
        }
        for m in w.metadata() {
            args.extend(["--metadata".to_owned(), m]);
        }
        self.start_proxy(
            index,
            mesh,
            &format!("sidecar/{}", w.workload.key()),
            (&w.workload.namespace, &w.workload.service_account),
            w.admin(),
            args,
        )
    }

    /// `isthmus-proxy` configured by mesh `index`'s isthmusd, named `<mesh>/<what>`, its log
    /// `<mesh>/logs/<what with dashes>.log`. It runs as service account `(namespace, name)`:
    /// a bootstrap token for that identity gets its certificate, and the certificate gets its
    /// configuration over mTLS (isthmusd's gate hands a node's keys only to that identity).
    fn start_proxy(
        &mut self,
        index: usize,
        mesh: &MeshPlan,
        what: &str,
        (namespace, service_account): (&str, &str),
        admin: SocketAddr,
        mut args: Vec<String>,
    ) -> anyhow::Result<()> {
        let runtime = &self.meshes[index];
        let identity = format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            mesh.trust_domain
        );
        let token_file = bootstrap_token(runtime, what, &identity)?;
        let grpc = runtime.xds.to_string();
        args.extend([
            "--identity".to_owned(),
            identity,
            "--token-file".to_owned(),
            token_file.display().to_string(),
            "--root-cert".to_owned(),
            runtime
                .state_dir
                .join("root-cert.pem")
                .display()
                .to_string(),
            "--ca-address".to_owned(),
            grpc.clone(),
            "--xds-address".to_owned(),
            grpc,
            "--admin-addr".to_owned(),
            admin.to_string(),
        ]);
        self.supervisor.start(ProcessSpec {
            name: format!("{}/{what}", mesh.name),
            program: our_binary("isthmus-proxy"),
            args,
            env: BTreeMap::from([("RUST_LOG".to_owned(), "info".to_owned())]),
            log: self
                .state
                .join(&mesh.name)
                .join("logs")
                .join(format!("{}.log", what.replace('/', "-"))),
        })?;
        Ok(())
    }

    async fn wait_ready(&mut self, proxies: &[(String, SocketAddr)]) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        for (what, admin) in proxies {
            let admin = admin.to_string();
            loop {
                self.fail_on_exit()?;
                let answer = http::get(&admin, "/ready", &admin).await;
                if matches!(answer, Ok((200, _))) {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "{what} not ready within {READY_DEADLINE:?} (/ready: {})",
                        match answer {
                            Ok((status, body)) => format!("{status} {}", body.trim()),
                            Err(e) => format!("{e:#}"),
                        }
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// An error naming any process that stopped, with the end of its log.
    fn fail_on_exit(&mut self) -> anyhow::Result<()> {
        let exited = self.supervisor.exited();
        if exited.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = exited
            .iter()
            .map(|e| {
                format!(
                    "{} stopped ({}); the end of {}:\n{}",
                    e.name,
                    e.status,
                    e.log.display(),
                    tail(&e.log, 12)
                )
            })
            .collect();
        bail!("{}", lines.join("\n"))
    }

    /// The processes that stopped on their own since the last call. Nothing restarts them.
    pub fn exited(&mut self) -> Vec<Exited> {
        self.supervisor.exited()
    }

    /// Re-reads DIR and re-renders every mesh's configuration (what changed reaches the
    /// proxies through each `isthmusd`'s directory watch). Workloads or gateways added or
    /// removed are not started or stopped: the warnings say so.
    pub fn reload(&mut self) -> anyhow::Result<Vec<String>> {
        let description = read_description(&self.description.dir).map_err(|e| located(&e))?;
        let new_plan = plan(&description, self.block);
        let mut warnings = Vec::new();
        if new_plan
            .meshes
            .iter()
            .map(|m| &m.name)
            .ne(self.plan.meshes.iter().map(|m| &m.name))
        {
            bail!(
                "the meshes of {} changed; restart `isthmusctl up` to run them",
                self.description.dir.display()
            );
        }
        for (old, new) in self.plan.meshes.iter().zip(&new_plan.meshes) {
            let old_w: Vec<_> = old
                .workloads
                .iter()
                .map(|w| (w.workload.key(), w.address))
                .collect();
            let new_w: Vec<_> = new
                .workloads
                .iter()
                .map(|w| (w.workload.key(), w.address))
                .collect();
            let old_g: Vec<_> = old.gateways.iter().map(|g| (&g.name, g.address)).collect();
            let new_g: Vec<_> = new.gateways.iter().map(|g| (&g.name, g.address)).collect();
            if old_w != new_w || old_g != new_g {
                warnings.push(format!(
                    "{}: workloads or gateways were added or removed; they start or stop only when `isthmusctl up` restarts",
                    old.name
                ));
            }
        }
        let previous = std::mem::replace(&mut self.description, description);
        let previous_plan = std::mem::replace(&mut self.plan, new_plan);
        for index in 0..self.meshes.len() {
            match self.write_config(index) {
                Ok(w) => warnings.extend(w),
                Err(e) => {
                    self.description = previous;
                    self.plan = previous_plan;
                    return Err(e);
                }
            }
        }
        Ok(warnings)
    }

    /// Stops a workload's command (not its sidecar), as if it crashed.
    pub async fn stop_app(&mut self, mesh: &str, workload: &str) -> anyhow::Result<()> {
        let name = format!("{mesh}/app/{workload}");
        self.supervisor
            .stop_one(&name)
            .await
            .with_context(|| format!("{name} is not running"))?;
        Ok(())
    }

    /// Starts a workload's command again.
    pub fn start_app(&mut self, mesh: &str, workload: &str) -> anyhow::Result<()> {
        let m = self
            .plan
            .meshes
            .iter()
            .find(|m| m.name == mesh)
            .with_context(|| format!("no mesh {mesh}"))?
            .clone();
        let w = m
            .workloads
            .iter()
            .find(|w| w.workload.key() == workload)
            .with_context(|| format!("no workload {workload} in {mesh}"))?;
        self.supervisor.start(app_spec(&self.state, &m, w))?;
        Ok(())
    }

    /// The workload `namespace/name` of `mesh`.
    pub fn workload(&self, mesh: &str, key: &str) -> Option<&WorkloadPlan> {
        self.plan
            .meshes
            .iter()
            .find(|m| m.name == mesh)?
            .workloads
            .iter()
            .find(|w| w.workload.key() == key)
    }

    /// Stops every process and removes the run file.
    pub async fn stop(&mut self) {
        self.supervisor.stop_all().await;
        if RunFile::read(&self.state).is_ok_and(|run| run.pid == std::process::id())
            || !RunFile::path(&self.state).exists()
        {
            let _ = std::fs::remove_file(RunFile::path(&self.state));
        }
    }

    pub fn run_file(&self) -> RunFile {
        let meshes = self
            .plan
            .meshes
            .iter()
            .zip(&self.meshes)
            .map(|(plan, runtime)| MeshEntry {
                name: plan.name.clone(),
                trust_domain: plan.trust_domain.clone(),
                config_dir: runtime.config_dir.clone(),
                debug: runtime.debug,
                xds: runtime.xds,
                federation: runtime.federation,
                gateways: plan
                    .gateways
                    .iter()
                    .map(|g| GatewayEntry {
                        name: g.name.clone(),
                        namespace: g.namespace.clone(),
                        direction: g.direction.to_owned(),
                        peer: g.peer.clone(),
                        listen: g.listen(),
                        admin: g.admin(),
                    })
                    .collect(),
                workloads: plan
                    .workloads
                    .iter()
                    .map(|w| WorkloadEntry {
                        name: w.workload.name.clone(),
                        namespace: w.workload.namespace.clone(),
                        service_account: w.workload.service_account.clone(),
                        outbound: w.outbound(),
                        admin: w.admin(),
                        address: w.address.to_string(),
                    })
                    .collect(),
            })
            .collect();
        RunFile {
            pid: std::process::id(),
            dir: self.description.dir.clone(),
            meshes,
            processes: self
                .supervisor
                .list()
                .into_iter()
                .map(|(name, pid, log)| ProcessEntry { name, pid, log })
                .collect(),
        }
    }

    /// What runs where, as a table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<6} {:<44} {:<30} {:<22} PID",
            "MESH", "WHAT", "LISTENS", "ADMIN"
        );
        let pids: BTreeMap<String, u32> = self
            .supervisor
            .list()
            .into_iter()
            .map(|(n, p, _)| (n, p))
            .collect();
        let pid = |name: &str| pids.get(name).map_or("-".to_owned(), ToString::to_string);
        for (plan, runtime) in self.plan.meshes.iter().zip(&self.meshes) {
            let m = &plan.name;
            let _ = writeln!(
                out,
                "{m:<6} {:<44} {:<30} {:<22} {}",
                format!("isthmusd ({})", plan.trust_domain),
                format!("xds {}", runtime.xds),
                format!("debug {}", runtime.debug),
                pid(&format!("{m}/isthmusd"))
            );
            for g in &plan.gateways {
                let _ = writeln!(
                    out,
                    "{m:<6} {:<44} {:<30} {:<22} {}",
                    format!("{} gateway {} (peer {})", g.direction, g.name, g.peer),
                    g.listen().to_string(),
                    g.admin().to_string(),
                    pid(&format!("{m}/gateway/{}", g.name))
                );
            }
            for w in &plan.workloads {
                let key = w.workload.key();
                let _ = writeln!(
                    out,
                    "{m:<6} {:<44} {:<30} {:<22} {}",
                    format!(
                        "{} {key} (sa {})",
                        if w.workload.ingress {
                            "ingress gateway"
                        } else {
                            "sidecar of"
                        },
                        w.workload.service_account
                    ),
                    if w.workload.ingress {
                        format!("listens on {}", w.address)
                    } else {
                        format!("http proxy {}", w.outbound())
                    },
                    w.admin().to_string(),
                    pid(&format!("{m}/sidecar/{key}"))
                );
                for (port, (inbound, app)) in &w.ports {
                    let _ = writeln!(
                        out,
                        "{m:<6} {:<44} {:<30} {:<22} {}",
                        format!("  {port}: inbound -> app"),
                        format!("{}:{inbound} -> :{app}", w.address),
                        "",
                        if w.workload.command.is_empty() {
                            "-".to_owned()
                        } else {
                            pid(&format!("{m}/app/{key}"))
                        }
                    );
                }
            }
        }
        out
    }
}

fn app_spec(state: &Path, mesh: &MeshPlan, w: &WorkloadPlan) -> ProcessSpec {
    let mut command = w.command();
    let program = command.remove(0);
    let program = match program.as_str() {
        "isthmusctl" | "isthmusd" | "isthmus-proxy" => our_binary(&program),
        _ => PathBuf::from(program),
    };
    let key = format!("{}-{}", w.workload.namespace, w.workload.name);
    ProcessSpec {
        name: format!("{}/app/{}", mesh.name, w.workload.key()),
        program,
        args: command,
        env: w.env(),
        log: state
            .join(&mesh.name)
            .join("logs")
            .join(format!("app-{key}.log")),
    }
}

/// Takes an address block no other run holds: `127.<block>.0.1:15099` stays bound for the
/// run's lifetime. The search starts from a hash of the state folder.
fn reserve_block(state: &Path) -> anyhow::Result<(u8, TcpListener)> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    state.hash(&mut hasher);
    let start = u8::try_from(hasher.finish() % 200).unwrap_or(0);
    for i in 0..200u8 {
        let block = 30 + (start.wrapping_add(i) % 200);
        if let Ok(lock) = TcpListener::bind((Ipv4Addr::new(127, block, 0, 1), BLOCK_LOCK_PORT)) {
            return Ok((block, lock));
        }
    }
    bail!("no free loopback address block (127.30-229.0.0/16): too many runs at once?")
}

/// Every address and port of the plan must be free before anything starts.
fn check_ports(plan: &Plan) -> anyhow::Result<()> {
    let mut wanted: Vec<(SocketAddr, String)> = Vec::new();
    for mesh in &plan.meshes {
        for g in &mesh.gateways {
            wanted.push((g.listen(), format!("{}: gateway {}", mesh.name, g.name)));
            wanted.push((
                g.admin(),
                format!("{}: gateway {} admin", mesh.name, g.name),
            ));
        }
        for w in &mesh.workloads {
            let key = w.workload.key();
            wanted.push((
                w.outbound(),
                format!("{}: {key} outbound (spec.outboundPort)", mesh.name),
            ));
            wanted.push((
                SocketAddr::from((w.address, ADMIN_PORT)),
                format!("{}: {key} sidecar admin", mesh.name),
            ));
            for (port, (inbound, app)) in &w.ports {
                wanted.push((
                    SocketAddr::from((w.address, *inbound)),
                    format!("{}: {key} inbound {port}", mesh.name),
                ));
                wanted.push((
                    SocketAddr::from((w.address, *app)),
                    format!("{}: {key} application port {port}", mesh.name),
                ));
            }
        }
    }
    for (i, (addr, what)) in wanted.iter().enumerate() {
        if let Some((_, other)) = wanted[..i].iter().find(|(a, _)| a == addr) {
            bail!("port clash: {addr} is wanted by {other} and by {what}");
        }
        if let Err(e) = TcpListener::bind(addr) {
            bail!("port clash: {addr} ({what}) is taken by another process: {e}");
        }
    }
    Ok(())
}

/// Whether the run recorded in `state` is alive.
pub fn running(state: &Path) -> bool {
    RunFile::read(state).is_ok_and(|run| process_alive(run.pid))
}

/// A bootstrap token for `identity` from the mesh's token store, written (0600) where only this
/// run reads it: `<the mesh's state>/proxy-tokens/<what with dashes>`.
fn bootstrap_token(runtime: &MeshRuntime, what: &str, identity: &str) -> anyhow::Result<PathBuf> {
    let id = isthmus_identity::SpiffeId::parse(identity)
        .map_err(|e| anyhow::anyhow!("{identity}: {e}"))?;
    let (_, token) = isthmus_controlplane::auth::tokens::TokenStore::new(&runtime.state_dir)
        .create(&id)
        .with_context(|| format!("bootstrap token for {identity}"))?;
    let dir = runtime.state_dir.join("proxy-tokens");
    isthmus_controlplane::private_files::create_private_dir(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let file = dir.join(what.replace('/', "-"));
    isthmus_controlplane::private_files::write_private(&file, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}
