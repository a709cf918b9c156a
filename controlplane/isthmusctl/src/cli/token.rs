//! `isthmusctl token …`: create, list and revoke bootstrap tokens in an `isthmusd` state
//! directory.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use isthmus_identity::SpiffeId;

use isthmus_controlplane::auth::tokens::TokenStore;
use isthmus_controlplane::private_files::write_private;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token bound to one SPIFFE ID. The token is shown once: written to --out with
    /// mode 0600, or printed.
    Create {
        /// isthmusd's state directory.
        #[arg(long)]
        state_dir: PathBuf,
        /// The identity the token may get certificates for, e.g.
        /// spiffe://cluster.local/ns/default/sa/ratings
        #[arg(long)]
        identity: SpiffeId,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List tokens (ids, identities, revocation), never their secrets.
    List {
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// Revoke a token: the CA refuses it from the next request on.
    Revoke {
        #[arg(long)]
        state_dir: PathBuf,
        /// The token id shown by `create` and `list`.
        token_id: String,
    },
}

impl TokenCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Create {
                state_dir,
                identity,
                out,
            } => {
                identity
                    .require_workload()
                    .context("--identity must be a workload identity")?;
                let (record, token) = TokenStore::new(&state_dir).create(&identity)?;
                match out {
                    Some(path) => {
                        write_private(&path, format!("{token}\n").as_bytes())
                            .with_context(|| format!("writing {}", path.display()))?;
                        println!(
                            "token {} for {} written to {}",
                            record.id,
                            record.spiffe_id,
                            path.display()
                        );
                    }
                    None => println!("{token}"),
                }
            }
            Self::List { state_dir } => {
                println!("{:<14} {:<24} {:<24} IDENTITY", "ID", "CREATED", "REVOKED");
                for r in TokenStore::new(&state_dir).list()? {
                    let revoked = r.revoked_at.as_deref().unwrap_or("-");
                    println!(
                        "{:<14} {:<24} {:<24} {}",
                        r.id, r.created_at, revoked, r.spiffe_id
                    );
                }
            }
            Self::Revoke {
                state_dir,
                token_id,
            } => {
                let r = TokenStore::new(&state_dir).revoke(&token_id)?;
                println!("token {} for {} revoked", r.id, r.spiffe_id);
            }
        }
        Ok(())
    }
}
