//! The allocated virtual addresses as the pipeline keeps them: the table in force, read from
//! `STATE/vips.json` at start and written back (0600, atomically) whenever it changes, so an
//! imported service or an address-less `ServiceEntry` keeps its address across `isthmusd`
//! restarts as long as its name exists, and holds the addresses of names that went for a
//! while ([`crate::model::vips`] allocates). The file is small (a line per name) and written
//! only when the table changes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::MeshModel;
use crate::model::vips::{self, HeldTable, Previous, VipRange, VipTable};
use crate::private_files::write_private;

/// The file in the state directory.
pub const VIPS_FILE: &str = "vips.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct VipsFile {
    range: String,
    addresses: VipTable,
    #[serde(default)]
    held: HeldTable,
}

/// The table in force and where it is kept.
#[derive(Debug)]
pub struct VipStore {
    range: VipRange,
    path: Option<PathBuf>,
    table: VipTable,
    held: HeldTable,
}

impl VipStore {
    /// The store of `state_dir` (none: in memory only). A missing file is an empty table; an
    /// unreadable one is reported and replaced, since names find their hash slots again.
    pub fn open(range: VipRange, state_dir: Option<&Path>) -> Self {
        let path = state_dir.map(|d| d.join(VIPS_FILE));
        let file = path.as_deref().map(read).unwrap_or_default();
        Self {
            range,
            path,
            table: file.addresses,
            held: file.held,
        }
    }

    /// Allocates the addresses `model` wants, assigns them, and keeps the new table.
    pub fn assign(&mut self, model: &mut MeshModel) {
        let wanted = vips::wanted(model.services.values());
        let reserved = vips::declared(model.services.values());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let previous = Previous {
            table: &self.table,
            held: &self.held,
            now,
        };
        let allocation = vips::allocate(previous, &wanted, &reserved, self.range);
        for name in &allocation.exhausted {
            tracing::warn!(
                host = %name,
                range = %self.range,
                "no virtual address left for this service (isthmusd --vip-range)"
            );
        }
        model.assign_virtual_addresses(&allocation.table);
        if allocation.table != self.table || allocation.held != self.held {
            self.table = allocation.table;
            self.held = allocation.held;
            self.save();
        }
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let file = VipsFile {
            range: self.range.to_string(),
            addresses: self.table.clone(),
            held: self.held.clone(),
        };
        let written = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|json| write_private(path, &json));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep the virtual addresses");
        }
    }
}

fn read(path: &Path) -> VipsFile {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return VipsFile::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the virtual addresses; allocating afresh");
            return VipsFile::default();
        }
    };
    match serde_json::from_slice::<VipsFile>(&text) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable virtual addresses; allocating afresh");
            VipsFile::default()
        }
    }
}
