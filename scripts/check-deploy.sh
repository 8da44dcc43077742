#!/usr/bin/env bash
# Validates the deployment files: Prometheus alert rules and config
# (promtool), the compose files (docker-compose config -q; no Docker engine
# is needed), the HAProxy configuration (haproxy -c) and the Grafana
# dashboard JSON. Installs promtool (Debian package prometheus),
# docker-compose and haproxy when missing and root; the API tests use
# promtool (`promtool check metrics` on /metrics) and haproxy (scale-out).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

install_missing() { # COMMAND PACKAGE
    command -v "$1" >/dev/null && return
    if [ "$(id -u)" -ne 0 ]; then
        echo "$1 is missing: sudo apt-get install $2" >&2
        exit 1
    fi
    echo "==> installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}
install_missing promtool prometheus
install_missing docker-compose docker-compose
install_missing haproxy haproxy

echo "==> promtool check rules docker/prometheus/alerts.yml"
promtool check rules docker/prometheus/alerts.yml
echo "==> promtool check config docker/prometheus/prometheus.yml"
(cd docker/prometheus && promtool check config prometheus.yml)
for file in docker/compose*.yml; do
    echo "==> docker-compose -f $file config -q"
    docker-compose -f "$file" config -q
done
echo "==> haproxy -c docker/haproxy/haproxy.cfg (service names mapped to loopback)"
checked="$(mktemp)"
trap 'rm -f "$checked"' EXIT
sed 's/ticket-ingest-[0-9]*:9098/127.0.0.1:9098/' docker/haproxy/haproxy.cfg >"$checked"
haproxy -c -q -f "$checked"
echo "==> Grafana dashboards parse as JSON"
for file in docker/grafana/dashboards/*.json; do
    python3 -m json.tool "$file" >/dev/null
done
echo "deployment files OK"
