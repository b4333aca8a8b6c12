#!/usr/bin/env bash
# Checks what must be absent from the dependency graph (see the layering in
# docs/ARCHITECTURE.md):
#   - only the storage crates (event-log, call-projections) depend on sled
#     directly; everything else reaches storage through them;
#   - only call-gateway, the JetStream engine of the log (event-log-jetstream)
#     and the tests depend on async-nats (the binary's client for people lives
#     in call-gateway too); event-log, call-commands and call-projections do not;
#   - only the tests (the peers benchmark) depend on tokio-postgres: PostgreSQL is a peer
#     measured beside the ledger, never a store of it;
#   - call-model and event-log depend on no other workspace crate;
#   - call-model's dependency tree has no tokio, sled or async-nats (it is
#     pure), and call-api's has no async-nats (it knows no transport);
#   - no public item of event-log names a sled type (callers see the contract);
#   - no NATS header name (`Nats-...`) is written below call-gateway, and in
#     call-gateway only headers.rs spells them (their one home; its tests
#     spell the wire as a client sees it).
# Direct dependencies come from `cargo metadata` (every kind: normal, build,
# dev); transitive ones from `cargo tree -e normal`.
set -euo pipefail
cd "$(dirname "$0")/.."

failed=0

# Direct-dependency rules, from the manifests of the workspace's packages.
metadata=$(mktemp)
trap 'rm -f "$metadata"' EXIT
cargo metadata --format-version 1 --no-deps --locked >"$metadata"
python3 - "$metadata" <<'PY' || failed=1
import json
import sys

# dependency -> the only workspace packages allowed to name it directly
ONLY_DIRECT = {
    "sled": {"event-log", "call-projections"},
    "async-nats": {"call-gateway", "event-log-jetstream", "call-ledger-tests"},
    "tokio-postgres": {"call-ledger-tests"},
}
# workspace packages that must not depend on any other workspace package
LEAVES = {"call-model", "event-log"}

meta = json.load(open(sys.argv[1]))
members = {p["name"]: p for p in meta["packages"] if p["id"] in meta["workspace_members"]}
missing = (set().union(*ONLY_DIRECT.values()) | LEAVES) - set(members)
if missing:
    sys.exit(f"FAIL: the rules name packages not in the workspace: {sorted(missing)}")

def deps(package):
    # (name, kind) for each dependency; `rename` does not change `name`.
    return [(d["name"], d["kind"] or "normal") for d in package["dependencies"]]

failures = 0
for dependency, allowed in ONLY_DIRECT.items():
    users = sorted(
        f"{name} ({kind})"
        for name, package in members.items()
        for dep, kind in deps(package)
        if dep == dependency and name not in allowed
    )
    if users:
        failures += 1
        print(f"FAIL: {dependency} may only be a direct dependency of {sorted(allowed)}; "
              f"also used by: {', '.join(users)}")
    else:
        print(f"ok: direct dependents of {dependency} are within {sorted(allowed)}")
for leaf in sorted(LEAVES):
    inner = sorted(f"{dep} ({kind})" for dep, kind in deps(members[leaf]) if dep in members)
    if inner:
        failures += 1
        print(f"FAIL: {leaf} must not depend on other workspace crates; depends on {', '.join(inner)}")
    else:
        print(f"ok: {leaf} depends on no other workspace crate")
sys.exit(1 if failures else 0)
PY

# Transitive rules: `cargo tree -p CRATE -e normal` must not contain these.
check_tree() {
    local crate=$1
    shift
    local tree found=()
    tree=$(cargo tree -p "$crate" -e normal --locked --prefix none --format '{p}') || {
        echo "FAIL: cargo tree -p $crate failed"
        failed=1
        return
    }
    local banned
    for banned in "$@"; do
        grep -q "^$banned v" <<<"$tree" && found+=("$banned")
    done
    if ((${#found[@]})); then
        echo "FAIL: $crate must not depend on ${found[*]}; see: cargo tree -p $crate -e normal -i ${found[0]}"
        failed=1
    else
        echo "ok: cargo tree -p $crate -e normal has none of: $*"
    fi
}
check_tree call-model tokio sled async-nats
check_tree call-api async-nats
check_tree event-log async-nats
check_tree call-commands async-nats
check_tree call-projections async-nats

# Source rules: the log's contract names no storage type (only pub(crate) items of the
# sled engine may), and the wire's header names stay at the edge.
if hits=$(grep -rnE '^\s*pub (fn|struct|enum|type|use|trait|const|mod)?.*sled::' crates/event-log/src --include='*.rs'); then
    echo "FAIL: a public item of event-log names a sled type (the contract must be engine-neutral):"
    echo "$hits"
    failed=1
else
    echo "ok: no public item of event-log names a sled type"
fi

below_gateway=(crates/call-model crates/event-log crates/call-commands crates/call-projections crates/call-api crates/callledger)
if hits=$(grep -rn 'Nats-' "${below_gateway[@]}" --include='*.rs'); then
    echo "FAIL: NATS header names appear below call-gateway:"
    echo "$hits"
    failed=1
else
    echo "ok: no NATS header name below call-gateway"
fi
if hits=$(grep -rn '"Nats-' crates/call-gateway/src --include='*.rs' | grep -v -e '^crates/call-gateway/src/headers.rs:' -e '^crates/call-gateway/src/tests.rs:'); then
    echo "FAIL: call-gateway spells NATS header names outside headers.rs:"
    echo "$hits"
    failed=1
else
    echo "ok: call-gateway names NATS headers only in headers.rs"
fi

if ((failed)); then
    echo "layering check failed" >&2
    exit 1
fi
