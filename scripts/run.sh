#!/usr/bin/env bash
# `make run`: build the release binary and serve, with a NATS server to talk to.
#
# If nothing answers at NATS_URL (default nats://127.0.0.1:4222) and that URL
# is local, starts `nats-server -js` on its port with its store in
# ${NATS_STORE_DIR:-./data/nats}, and stops it when callledger exits.
# Extra arguments are passed to `callledger serve`.
#
# Environment: NATS_URL, CALLLEDGER_DATA_DIR (default ./data), NATS_STORE_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'run: %s\n' "$*" >&2; }

nats_url_given=${NATS_URL:+yes}
export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
data_dir=${CALLLEDGER_DATA_DIR:-./data}
store_dir=${NATS_STORE_DIR:-./data/nats}

say "building target/release/callledger"
cargo build --release --locked -p callledger
nats_bin=$(scripts/ensure-nats-server.sh)

# Host and port of the first server in NATS_URL ("nats://user:pass@host:port,...").
first=${NATS_URL%%,*}
first=${first#*://}
first=${first##*@}
first=${first%%/*}
host=${first%:*}
port=${first##*:}
[[ $first == *:* ]] || port=4222
[[ -n $host ]] || host=127.0.0.1

# server_info HOST PORT: the server's INFO line, or failure if nothing answers.
server_info() {
    # shellcheck disable=SC2016 # $1 and $2 are for the inner shell.
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2" && head -n1 <&3' _ "$1" "$2" 2>/dev/null
}

is_local() { [[ $1 == 127.0.0.1 || $1 == localhost || $1 == ::1 || $1 == "[::1]" ]]; }

start_nats() {
    local port=$1
    mkdir -p "$store_dir"
    say "starting $nats_bin -js on 127.0.0.1:$port (store $store_dir, log $store_dir/nats-server.log)"
    "$nats_bin" -js -a 127.0.0.1 -p "$port" -sd "$store_dir" >>"$store_dir/nats-server.log" 2>&1 &
    nats_pid=$!
    trap 'kill -TERM "$nats_pid" 2>/dev/null; wait "$nats_pid" 2>/dev/null || true' EXIT
    local i
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$nats_pid" 2>/dev/null; then
            say "nats-server exited; last lines of its log:"
            tail -n 20 "$store_dir/nats-server.log" >&2
            exit 1
        fi
        server_info 127.0.0.1 "$port" >/dev/null && return 0
        sleep 0.1
    done
    say "nats-server did not accept connections on port $port within 10 s"
    exit 1
}

nats_pid=
if info=$(server_info "$host" "$port"); then
    if [[ $info == *'"jetstream":true'* ]]; then
        say "using the NATS server already running at $NATS_URL"
    elif [[ -z $nats_url_given ]] && is_local "$host"; then
        # Typically Debian's nats-server.service, which runs without JetStream.
        alt=${NATS_FALLBACK_PORT:-4223}
        say "the NATS server at $NATS_URL has no JetStream; starting our own on port $alt"
        say "(for client commands in another shell: export NATS_URL=nats://127.0.0.1:$alt)"
        server_info 127.0.0.1 "$alt" >/dev/null && {
            say "port $alt is taken too; set NATS_URL to a JetStream-enabled server"
            exit 1
        }
        start_nats "$alt"
        export NATS_URL=nats://127.0.0.1:$alt
    else
        say "the NATS server at $NATS_URL has no JetStream; callledger needs it (nats-server -js)"
        exit 1
    fi
elif is_local "$host"; then
    start_nats "$port"
else
    say "nothing answers at $NATS_URL and it is not local; start that server or change NATS_URL"
    exit 1
fi

cmd=(target/release/callledger serve --data-dir "$data_dir" "$@")
say "${cmd[*]}  (NATS_URL=$NATS_URL)"
if [[ -z $nats_pid ]]; then
    exec "${cmd[@]}"
fi

# We own a nats-server, so we cannot exec: stay around to stop it afterwards.
# callledger runs as our child; Ctrl-C or a TERM to us is passed on as TERM so
# it shuts down cleanly before its NATS server goes away.
"${cmd[@]}" &
app_pid=$!
trap 'kill -TERM "$app_pid" 2>/dev/null || true' INT TERM
rc=0
wait "$app_pid" || rc=$?
while kill -0 "$app_pid" 2>/dev/null; do
    rc=0
    wait "$app_pid" || rc=$?
done
exit "$rc"
