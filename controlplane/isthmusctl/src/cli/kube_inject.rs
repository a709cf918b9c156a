//! `isthmusctl kube-inject -f FILE|-`: the injection webhook's code run offline, as
//! `istioctl kube-inject`. Reads multi-document YAML, injects the pods of `Pod`, `Deployment`,
//! `StatefulSet`, `DaemonSet`, `ReplicaSet`, `Job` and `CronJob` documents (also as the items of
//! a `List`), and writes every document back (other kinds unchanged), so that the result can go
//! to `kubectl apply -f -`.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use isthmus_controlplane::admission::inject::InjectSettings;
use isthmus_controlplane::admission::inject::settings::DEFAULT_PROXY_IMAGE;
use isthmus_controlplane::admission::inject::workloads::{Outcome, inject_document};
use isthmus_controlplane::config::yaml::documents;
use isthmus_identity::TrustDomain;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct KubeInjectArgs {
    /// The YAML to inject; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: String,
    /// Write the result here instead of standard output.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// The mesh's trust domain (the sidecars' identities), as isthmusd's --trust-domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The namespace isthmusd runs in, as isthmusd's --namespace.
    #[arg(long, default_value = "isthmus-system")]
    control_plane_namespace: String,
    /// The isthmus-proxy image, as isthmusd's --proxy-image.
    #[arg(long, default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// isthmusd's certificate service and xDS address; default its Service,
    /// isthmusd.<control-plane-namespace>.svc:15012.
    #[arg(long)]
    isthmusd_address: Option<String>,
}

impl KubeInjectArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let text = if self.file == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read standard input")?;
            text
        } else {
            std::fs::read_to_string(&self.file)
                .with_context(|| format!("cannot read {}", self.file))?
        };
        let mut settings = InjectSettings::new(self.trust_domain, &self.control_plane_namespace);
        settings.proxy_image = self.proxy_image;
        if let Some(address) = self.isthmusd_address {
            settings.isthmusd_address = address;
        }
        let source = if self.file == "-" {
            "<stdin>"
        } else {
            self.file.as_str()
        };
        let out = inject_text(&text, &settings, source)?;
        match self.output {
            Some(path) => std::fs::write(&path, out)
                .with_context(|| format!("cannot write {}", path.display()))?,
            None => std::io::stdout()
                .write_all(out.as_bytes())
                .context("cannot write standard output")?,
        }
        Ok(())
    }
}

/// Injects every document of `text` (named `source` in errors); the documents come back in
/// order, separated by `---`.
pub fn inject_text(text: &str, settings: &InjectSettings, source: &str) -> anyhow::Result<String> {
    let docs = documents(text).map_err(|e| match e.line {
        Some(line) => anyhow::anyhow!("{source}:{line}: not YAML: {}", e.reason),
        None => anyhow::anyhow!("{source}: not YAML: {}", e.reason),
    })?;
    let mut out = String::new();
    for doc in docs {
        let describe = || {
            let kind = doc.value.get("kind").and_then(Value::as_str).unwrap_or("?");
            let name = doc
                .value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("?");
            format!(
                "{source}:{} (document {}, {kind} {name})",
                doc.line, doc.index
            )
        };
        let value = match inject_document(&doc.value, settings) {
            Ok(Outcome::Injected(value)) => value,
            Ok(Outcome::Skipped(reason)) => {
                eprintln!("{}: not injected: {reason}", describe());
                doc.value.clone()
            }
            Ok(Outcome::NotAWorkload) => doc.value.clone(),
            Err(e) => bail!("{}: {e}", describe()),
        };
        let yaml = serde_saphyr::to_string(&value)
            .with_context(|| format!("{}: cannot write it as YAML", describe()))?;
        out.push_str("---\n");
        out.push_str(&yaml);
        if !yaml.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
