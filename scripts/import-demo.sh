#!/usr/bin/env bash
# `make import-demo`: generate N calls (default 100000), import them into a
# fresh data directory, rebuild the projections from the log and verify them,
# timing each step. The data directory is ${DEMO_DIR:-./data/import-demo}
# and is wiped first; a running `make run` server (./data) is not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-100000}
dir=${DEMO_DIR:-./data/import-demo}
input=./data/calls-$n.ndjson
bin=target/release/callledger

step() {
    local name=$1 start=$SECONDS
    shift
    printf '==> %s\n' "$name" >&2
    "$@"
    printf '<== %s (%ds)\n' "$name" $((SECONDS - start)) >&2
}

step "cargo build --release -p callledger" cargo build --release --locked -p callledger
mkdir -p ./data
# shellcheck disable=SC2016 # $1 and $2 are for the inner shell.
[[ -s $input ]] || step "scripts/gen-calls.py $n > $input" \
    bash -c 'scripts/gen-calls.py "$1" > "$2.tmp" && mv "$2.tmp" "$2"' _ "$n" "$input"
rm -rf "$dir"
step "callledger import $input" "$bin" import --data-dir "$dir" "$input"
step "callledger rebuild" "$bin" rebuild --data-dir "$dir"
step "callledger verify" "$bin" verify --data-dir "$dir"
step "callledger stats" "$bin" stats --data-dir "$dir"
