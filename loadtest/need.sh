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
