#!/usr/bin/env bash
# Installs what mtr's tests and demo need on a Debian/Ubuntu machine, and only what is missing:
# apt packages (as root), a Rust toolchain (rustup) and the musl target the remote agent is
# built for. Prints everything it installs.
#
#   scripts/setup.sh [EXTRA_APT_PACKAGE...]         # run it
#   source scripts/setup.sh; mtr_setup [EXTRA...]   # or from another script (keeps PATH changes)

# The tools the tests drive: sshd/ssh/ssh-keygen, the rsync and sshpass baselines, musl-gcc for
# the static agent, tmux for terminal tests, ip/tc for network namespaces, ps, a C toolchain and
# OpenSSL headers for the -sys crates.
MTR_APT_PACKAGES=(openssh-server openssh-client rsync sshpass musl-tools tmux iproute2 procps
    libssl-dev pkg-config gcc libc6-dev make)

mtr_log() { printf 'setup: %s\n' "$*" >&2; }

mtr_missing_packages() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            printf '%s\n' "$pkg"
        fi
    done
}

mtr_setup_apt() {
    local missing
    mapfile -t missing < <(mtr_missing_packages "${MTR_APT_PACKAGES[@]}" "$@")
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    if ! command -v apt-get >/dev/null; then
        mtr_log "missing: ${missing[*]}; no apt-get here: install them with your package manager"
        return 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        mtr_log "missing: ${missing[*]}; run as root to install them"
        return 1
    fi
    mtr_log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

mtr_setup_rust() {
    if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null; then
        mtr_log "installing the Rust toolchain with rustup (https://sh.rustup.rs)"
        mtr_setup_apt curl ca-certificates
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    # The agent is a static musl binary for the remote's arch; the host's arch is the one the
    # tests need (the remote is this machine).
    local target
    target="$(uname -m)-unknown-linux-musl"
    if command -v rustup >/dev/null; then
        if ! rustup target list --installed | grep -qx "$target"; then
            mtr_log "installing the Rust target $target"
            rustup target add "$target"
        fi
    elif ! rustc --print target-libdir --target "$target" >/dev/null 2>&1; then
        mtr_log "no rustup and no $target target: install rustup (https://rustup.rs)"
        return 1
    fi
}

# mtr_setup [EXTRA_APT_PACKAGE...]: everything above.
mtr_setup() {
    mtr_setup_apt "$@"
    mtr_setup_rust
    # sshd's privilege separation dir, normally made by its service unit.
    if [ "$(id -u)" -eq 0 ]; then
        mkdir -p /run/sshd
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    mtr_setup "$@"
fi
