//! `isthmusctl manifests crds`: write (or check) the CRDs generated from the resource types.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use isthmus_api::crd::crd_files;

#[derive(Debug, Subcommand)]
pub enum ManifestsCommand {
    /// The CustomResourceDefinitions of every supported kind, one file each, and a
    /// kustomization.yaml listing them.
    Crds {
        /// Write into this directory; without it, print every CRD to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Compare with the files in --out instead of writing; fail if any differs.
        #[arg(long, requires = "out")]
        check: bool,
    },
}

impl ManifestsCommand {
    pub fn run(self) -> anyhow::Result<()> {
        let Self::Crds { out, check } = self;
        let files = crd_files();
        let Some(dir) = out else {
            for (name, yaml) in files.iter().filter(|(n, _)| n != "kustomization.yaml") {
                println!("---\n# {name}\n{yaml}");
            }
            return Ok(());
        };
        if check {
            let stale: Vec<&str> = files
                .iter()
                .filter(|(name, yaml)| {
                    std::fs::read_to_string(dir.join(name)).ok().as_ref() != Some(yaml)
                })
                .map(|(name, _)| name.as_str())
                .collect();
            if !stale.is_empty() {
                bail!("{} is stale: {}", dir.display(), stale.join(", "));
            }
            println!("{} is current ({} files)", dir.display(), files.len());
            return Ok(());
        }
        std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
        for (name, yaml) in &files {
            let path = dir.join(name);
            std::fs::write(&path, yaml).with_context(|| path.display().to_string())?;
        }
        println!("wrote {} files into {}", files.len(), dir.display());
        Ok(())
    }
}
