#!/usr/bin/env bash
# The project's test command (README "Quick start"): installs what the tests use
# (tests/install.sh), builds every binary once, then runs every test against that one build.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install.sh

# One build shared by all tests: the e2e tests run the binaries this produces.
cargo build --workspace --bins --locked
cargo test --workspace --locked
