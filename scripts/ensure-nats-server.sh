#!/usr/bin/env bash
# Prints the path of a usable nats-server binary (v2.2 or later, so it has
# JetStream) on stdout, and nothing else there.
#
# Looks at $NATS_SERVER, then PATH, then the usual install locations. If none
# is found it installs Debian's `nats-server` package with apt-get (through
# sudo when not root). If that is impossible it says what to run and exits 1.
# Everything meant for humans goes to stderr so callers can do
#   nats=$(scripts/ensure-nats-server.sh)
set -euo pipefail

say() { printf 'ensure-nats-server: %s\n' "$*" >&2; }

# usable BIN: BIN runs and reports a version of 2.2 or later.
usable() {
    local out major minor
    out=$("$1" --version 2>/dev/null) || return 1
    [[ $out =~ v([0-9]+)\.([0-9]+) ]] || return 1
    major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]}
    ((major > 2 || (major == 2 && minor >= 2)))
}

find_nats() {
    local candidate
    for candidate in "${NATS_SERVER:-}" "$(command -v nats-server 2>/dev/null || true)" \
        /usr/sbin/nats-server /usr/bin/nats-server /usr/local/bin/nats-server \
        "$HOME/go/bin/nats-server"; do
        if [[ -n $candidate && -x $candidate ]] && usable "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

manual_instructions() {
    say "could not install nats-server automatically. Install it, then re-run:"
    say "  Debian/Ubuntu:  sudo apt-get update && sudo apt-get install -y nats-server"
    say "  elsewhere:      a v2.9+ release from https://github.com/nats-io/nats-server/releases"
    say "                  on PATH, or point NATS_SERVER=/path/to/nats-server at it"
}

if find_nats; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    say "nats-server not found and apt-get is not available."
    manual_instructions
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        say "nats-server not found; installing it needs root and sudo is not available."
        manual_instructions
        exit 1
    fi
    sudo=(sudo)
    # Without a terminal sudo cannot ask for a password; fail fast instead of hanging.
    [[ -t 0 ]] || sudo=(sudo -n)
fi

say "nats-server not found; installing Debian's nats-server package (${sudo[*]:-as root})"
export DEBIAN_FRONTEND=noninteractive
apt_install() { "${sudo[@]}" apt-get install -y -q nats-server >&2; }
# Try with the package lists already present; refresh them only if that fails.
if ! apt_install; then
    if ! { "${sudo[@]}" apt-get update -q >&2 && apt_install; }; then
        manual_instructions
        exit 1
    fi
fi

if find_nats; then
    exit 0
fi
say "apt-get installed nats-server but no usable binary was found."
manual_instructions
exit 1
