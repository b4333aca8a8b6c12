#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, no sanitizer: the stable toolchain),
# each for SECONDS, from the committed seeds in fuzz/seeds/<target> plus a scratch corpus.
# Fails on the first crash, panic, hang (an input running over 10 s) or allocation past 2 GiB,
# and says where libFuzzer put the input that did it.
#
#   scripts/fuzz.sh SECONDS [TARGET...]      (default: every target)
#
# Installs cargo-fuzz (pinned) with `cargo install` when `cargo fuzz` is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(query_string write_document cursor event_decode)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing cargo-fuzz $CARGO_FUZZ_VERSION with cargo install" >&2
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

cd fuzz
cargo fuzz build --sanitizer none -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    if ! cargo fuzz run --sanitizer none -O "$target" "$scratch/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "fuzz target $target FAILED; the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
    corpus=$(find "$scratch/$target" -type f | wc -l)
    echo "fuzz target $target: $runs runs in ${seconds} s, no crash, $corpus new inputs kept in the scratch corpus"
done
