//! `isthmusctl config validate DIR`: the checks `isthmusd` applies to its configuration
//! directory, offline, with every problem located.

use std::path::PathBuf;

use clap::Subcommand;

use isthmus_controlplane::config::load_dir;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check every YAML document under DIR; list problems with file, document, line and field.
    Validate { dir: PathBuf },
}

impl ConfigCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Validate { dir } => match load_dir(&dir) {
                Ok(snapshot) => {
                    let counts: Vec<String> = snapshot
                        .counts()
                        .into_iter()
                        .map(|(kind, n)| format!("{n} {kind}"))
                        .collect();
                    println!(
                        "{}: valid ({} resources: {})",
                        dir.display(),
                        snapshot.len(),
                        counts.join(", ")
                    );
                    Ok(())
                }
                Err(errors) => {
                    for e in &errors {
                        println!("{e}");
                    }
                    anyhow::bail!("{}: {} problem(s)", dir.display(), errors.len())
                }
            },
        }
    }
}
