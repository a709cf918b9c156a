//! `isthmusctl`: the operator's command line. Each subcommand lives in its own module.
#![allow(clippy::print_stdout)]

pub mod bootstrap;
mod build;
pub mod cert;
pub mod config;
mod debug_client;
pub mod demo;
pub mod doctor;
pub mod echo;
mod echo_grpc;
pub mod federation;
pub mod kube_inject;
pub mod manifests;
pub mod status;
pub mod token;
pub mod top;
pub mod up;

use clap::{Parser, Subcommand};

/// Operate Isthmus meshes: run them locally (up, demo), status, configuration, bootstrap
/// tokens, workload certificates.
#[derive(Debug, Parser)]
#[command(name = "isthmusctl", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bootstrap tokens: the credential a workload presents to the CA in local mode.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Workload certificates: request one from a running isthmusd, or inspect PEM files.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Mesh configuration (YAML): validate a directory offline.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// What a running isthmusd has: configuration in force and rejected, connected proxies with
    /// their version and ACK/NACK state per xDS type.
    Status(status::StatusCommand),
    /// Bootstraps for proxies: `bootstrap envoy` makes a stock Envoy a workload's sidecar.
    #[command(subcommand)]
    Bootstrap(bootstrap::BootstrapCommand),
    /// An HTTP echo service (for demos and tests): answers with its name and the request.
    Echo(echo::EchoCommand),
    /// Kubernetes manifests generated from the code: `manifests crds`.
    #[command(subcommand)]
    Manifests(manifests::ManifestsCommand),
    /// Add the Isthmus sidecar to the pods of Kubernetes YAML offline, as the injection
    /// webhook would (`kube-inject -f deployment.yaml | kubectl apply -f -`).
    KubeInject(kube_inject::KubeInjectArgs),
    /// Federation across the running meshes: `graph` (who exports what to whom, imported as
    /// what), `check DIR` (what a change would start or stop sending across).
    #[command(subcommand)]
    Federation(federation::FederationCommand),
    /// Follow one imported service along its path (name, sidecar, egress gateway, peer
    /// ingress gateway, endpoint, authorization) and say at which hop and why it breaks.
    Doctor(doctor::DoctorCommand),
    /// Golden signals of every service and peer of the running meshes, from the sidecars'
    /// metrics (requests per second, success rate, p50/p99 latency, callers' mesh).
    Top(top::TopCommand),
    /// Run every mesh a folder describes on this machine, until Ctrl-C.
    Up(up::UpCommand),
    /// Run examples/two-meshes, drive traffic through it, and report what that proved.
    Demo(demo::DemoCommand),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Token(cmd) => cmd.run(),
            Command::Cert(cmd) => cmd.run().await,
            Command::Config(cmd) => cmd.run(),
            Command::Status(cmd) => cmd.run().await,
            Command::Bootstrap(cmd) => cmd.run(),
            Command::Echo(cmd) => cmd.run().await,
            Command::Manifests(cmd) => cmd.run(),
            Command::KubeInject(cmd) => cmd.run(),
            Command::Federation(cmd) => cmd.run().await,
            Command::Doctor(cmd) => cmd.run().await,
            Command::Top(cmd) => cmd.run().await,
            Command::Up(cmd) => cmd.run().await,
            Command::Demo(cmd) => cmd.run().await,
        }
    }
}
