#!/usr/bin/env bash
# Soak: 500 rps across two federated meshes for MINUTES (default 30) with configuration changes,
# certificate rotations and discovery reconnects, sampling every process's RSS and open file
# descriptors; fails if either grows over the second half (fitted slope) or a request fails.
# CI runs the same test for 2 minutes (ISTHMUS_SOAK_MINUTES unset) through `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-30}"
cargo build --workspace --bins --locked
ISTHMUS_SOAK_MINUTES="$minutes" cargo test --locked -p isthmus-e2e --test soak -- --nocapture
