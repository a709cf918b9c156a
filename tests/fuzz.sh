#!/usr/bin/env bash
# Fuzzes every target of fuzz/ (cargo-fuzz, libFuzzer) for SECONDS each:
#
#   tests/fuzz.sh SECONDS [TARGET...]
#
# Installs the nightly toolchain and cargo-fuzz if missing, builds the targets (address
# sanitizer, debug assertions and overflow checks), runs each with its seeds of
# fuzz/corpus/<target>/ (read only: what a run adds goes to fuzz/work/<target>/, not checked
# in), copies any crash into fuzz/regressions/<target>/, and prints per target the executions,
# exec/s, libFuzzer's final coverage (cov: edges, ft: features) and the corpus size. Exits
# non-zero if a target crashed (or did not run). Logs: fuzz/work/<target>.log.
#
# FUZZ_JOBS=N runs N targets at a time (default 1). Not part of CI (.ci/run): CI replays the
# saved inputs on stable with `cargo test -p isthmus-e2e --test fuzz_regressions`.
set -euo pipefail

seconds=${1:?usage: tests/fuzz.sh SECONDS [TARGET...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
all=(client_hello envoy_config yaml_config discovery_importer http_edge admission_review telemetry_headers)
targets=("${@:-${all[@]}}")
jobs=${FUZZ_JOBS:-1}

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz > /dev/null; then
    cargo install cargo-fuzz --locked
fi
# The fuzz workspace resolves to the main workspace's versions.
[[ -f fuzz/Cargo.lock ]] || cp Cargo.lock fuzz/Cargo.lock

flags=(--debug-assertions)
echo "== building ${targets[*]}"
cargo +nightly fuzz build "${flags[@]}"
bin=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release

run_target() {
    local target=$1
    local work=fuzz/work/$target
    local log=fuzz/work/$target.log
    mkdir -p "$work" "fuzz/artifacts/$target" "fuzz/regressions/$target"
    local stamp
    stamp=$(mktemp)
    local args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048)
    [[ -f fuzz/dicts/$target.dict ]] && args+=(-dict="fuzz/dicts/$target.dict")
    echo "== $target: ${seconds}s"
    local rc=0
    # The binary built above, run directly: `cargo fuzz run` would rebuild it first when a
    # source changed meanwhile, and every target should run the same build.
    "$bin/$target" -artifact_prefix="fuzz/artifacts/$target/" "${args[@]}" \
        "$work" "fuzz/corpus/$target" > "$log" 2>&1 || rc=$?
    local crashes=0
    while IFS= read -r -d '' artifact; do
        cp "$artifact" "fuzz/regressions/$target/"
        echo "   $target: crash saved as fuzz/regressions/$target/$(basename "$artifact")"
        crashes=$((crashes + 1))
    done < <(find "fuzz/artifacts/$target" -type f -newer "$stamp" -print0)
    rm -f "$stamp"
    if ((rc != 0 && crashes == 0)); then
        echo "   $target: libFuzzer exited with $rc and no artifact; see $log"
        crashes=1
    fi
    echo "$crashes" > "$work.crashes"
}

report() {
    local target=$1
    local log=fuzz/work/$target.log
    local last execs rate corpus
    last=$(grep -E '^#[0-9]+.* cov: ' "$log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    # libFuzzer's corpus (seeds + what it kept), and the files of the work corpus on disk.
    corpus=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<< "$last")
    printf '%-19s %5ss  execs %-9s exec/s %-6s cov %-5s ft %-6s corpus %s (%s files)  crashes %s\n' \
        "$target" "$seconds" "${execs:-?}" "${rate:-?}" \
        "$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<< "$last")" \
        "$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<< "$last")" \
        "${corpus:-?}" "$(find "fuzz/work/$target" -type f | wc -l)" \
        "$(cat "fuzz/work/$target.crashes")"
}

running=0
for target in "${targets[@]}"; do
    run_target "$target" &
    running=$((running + 1))
    if ((running >= jobs)); then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

echo "== $(date -u +%FT%TZ), ${seconds}s per target"
failed=0
for target in "${targets[@]}"; do
    report "$target"
    if [[ "$(cat "fuzz/work/$target.crashes")" != 0 ]]; then
        failed=1
    fi
done
exit "$failed"
