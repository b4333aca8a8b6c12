#!/usr/bin/env bash
# A three-node NATS cluster on loopback (deploy/cluster/n1..n3.conf, nats-server 2.15.1 with
# every write fsynced) and call-ledger instances on it, for trying the JetStream log by hand.
# Everything lives in .cluster/ (git-ignored): stores, data directories, logs, pids.
#
#   deploy/cluster/cluster.sh start        the three nodes, then three instances (make cluster)
#   deploy/cluster/cluster.sh stop [NAME]  every instance (SIGTERM, drained), then every node; or one
#   deploy/cluster/cluster.sh kill n2      SIGKILL one node (n1, n2, n3) or instance (i1, i2, i3)
#   deploy/cluster/cluster.sh restart n2   start one node or instance again
#   deploy/cluster/cluster.sh status       what runs
set -euo pipefail
cd "$(dirname "$0")/../.."
state=.cluster
mkdir -p "$state"

say() { printf 'cluster: %s\n' "$*" >&2; }
nats_server() { scripts/ensure-nats-server-2.15.sh; }
callledger() { printf '%s\n' "$PWD/target/release/callledger"; }
build() {
    say "building callledger (release)"
    cargo build --release --locked -p callledger >&2
}
# Alive and not a zombie (a killed child whose parent, this script, is gone may linger as one).
running() {
    [[ -f $state/$1.pid ]] || return 1
    local status
    status=$(ps -o stat= -p "$(cat "$state/$1.pid")" 2>/dev/null) || return 1
    [[ -n $status && $status != Z* ]]
}

start_node() {
    local name=$1
    running "$name" && { say "$name runs already"; return; }
    "$(nats_server)" -c "deploy/cluster/$name.conf" >>"$state/$name.log" 2>&1 &
    echo $! >"$state/$name.pid"
    say "$name started (pid $!, client port 423${name#n}, log $state/$name.log)"
}

start_instance() {
    local name=$1
    running "$name" && { say "$name runs already"; return; }
    "$(callledger)" serve --config deploy/cluster/callledger.toml --data-dir "$state/data-$name" \
        >>"$state/$name.log" 2>&1 &
    echo $! >"$state/$name.pid"
    say "$name started (pid $!, data $state/data-$name, log $state/$name.log)"
}

start_one() {
    case $1 in
    n[123]) start_node "$1" ;;
    i[123]) start_instance "$1" ;;
    *) say "no such node or instance: $1 (n1..n3, i1..i3)"; exit 2 ;;
    esac
}

wait_for_api() {
    local bin
    bin=$(callledger)
    for _ in $(seq 1 120); do
        if "$bin" calls list 'page[size]=1' --nats-url nats://127.0.0.1:4231 --timeout 2 >/dev/null 2>&1; then
            say "the API answers on calls.api.* (try: target/release/callledger calls list --nats-url nats://127.0.0.1:4231)"
            return
        fi
        sleep 0.5
    done
    say "the API does not answer yet; see $state/i*.log"
    exit 1
}

signal_one() {
    local signal=$1 name=$2
    if running "$name"; then
        kill "-$signal" "$(cat "$state/$name.pid")"
        say "$name: SIG$signal"
    else
        say "$name is not running"
    fi
}

stop_one() {
    local name=$1
    running "$name" || return 0
    local pid
    pid=$(cat "$state/$name.pid")
    kill -TERM "$pid"
    for _ in $(seq 1 300); do running "$name" || break; sleep 0.1; done
    running "$name" && kill -KILL "$pid"
    rm -f "$state/$name.pid"
    say "$name stopped"
}

case ${1:-} in
start)
    build
    for node in n1 n2 n3; do start_node "$node"; done
    for instance in i1 i2 i3; do start_instance "$instance"; done
    wait_for_api
    ;;
stop)
    if [[ -n ${2:-} ]]; then
        stop_one "$2"
    else
        for name in i1 i2 i3 n1 n2 n3; do stop_one "$name"; done
    fi
    ;;
kill) signal_one KILL "${2:?kill what: n1..n3 or i1..i3}" ;;
restart)
    [[ ${2:-} == i* ]] && build
    start_one "${2:?restart what: n1..n3 or i1..i3}"
    ;;
status)
    for name in n1 n2 n3 i1 i2 i3; do
        if running "$name"; then echo "$name running (pid $(cat "$state/$name.pid"))"; else echo "$name stopped"; fi
    done
    ;;
*)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
