#!/usr/bin/env bash
# Sourced by the load scripts.
# need TOOL [PACKAGE]: when TOOL is missing, installs Debian's PACKAGE
# (default: TOOL) as root, or says what to install and exits.
need() {
    command -v "$1" >/dev/null && return
    local package="${2:-$1}"
    [ "$(id -u)" -eq 0 ] || { echo "$1 is missing: sudo apt-get install $package" >&2; exit 1; }
    echo "==> installing $package" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
}

# need_cargo TOOL: when TOOL is missing, installs it from crates.io with
# `cargo install --locked` (it lands in ~/.cargo/bin, put on the PATH here).
need_cargo() {
    export PATH="$HOME/.cargo/bin:$PATH"
    command -v "$1" >/dev/null && return
    command -v cargo >/dev/null || { echo "$1 is missing: cargo install $1" >&2; exit 1; }
    echo "==> installing $1 (cargo install --locked $1)" >&2
    cargo install --locked -q "$1"
}
