#!/usr/bin/env bash
# Validates the deployment files under docker/ without a Docker engine, and
# optionally a running instance's /metrics:
#   scripts/check-deploy.sh [METRICS_URL]
#   CHECK_METRICS_URL=http://127.0.0.1:9098/metrics scripts/check-deploy.sh
# Checks, one output line each (ok / FAIL / skip; a failure's output follows
# it, indented); every check runs, the exit status is 1 if any failed:
#   - promtool check rules docker/prometheus/alerts.yml
#   - promtool test rules docker/prometheus/alerts.test.yml (alert unit tests)
#   - promtool check config docker/prometheus/prometheus.yml (rule_files
#     resolve relative to that file, as they do in the container)
#   - Grafana: dashboards parse (python3 -m json.tool), their PromQL parses
#     (promtool, Grafana variables replaced), provisioning files parse (YAML)
#   - compose files: `docker-compose -f FILE config -q` (Debian's
#     docker-compose; skipped, saying why, when it cannot be installed or
#     CHECK_DEPLOY_COMPOSE=python), and a python3 YAML parse plus structural
#     checks (build context and Dockerfile, bind-mount sources, named
#     volumes, depends_on), which docker-compose 1.x config does not do
#   - haproxy -c on docker/haproxy/haproxy.cfg (service names mapped to
#     loopback)
#   - scripts/ticket.txt, read by the old service's load command, is a link
#     to loadtest/ticket.txt
#   - with a URL: GET it with `Accept: text/plain` (the Prometheus text
#     format) and pipe it through `promtool check metrics` (lint included:
#     any finding fails); then every ticket_ingest_* name used by the alerts
#     and the dashboards must be a metric family of that output. Without a
#     URL this check is skipped, saying so.
# Tools: installs Debian's prometheus (promtool), docker-compose, haproxy and
# python3-yaml with apt-get when missing and run as root; otherwise the
# checks needing them fail and name the package. The API tests also use
# promtool and haproxy, which scripts/test.sh gets from here.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

metrics_url="${1:-${CHECK_METRICS_URL:-}}"
work="$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")"
trap 'rm -rf "$work"' EXIT
failures=0

ok() { printf 'ok    %s\n' "$1"; }
skip() { printf 'skip  %s\n' "$1"; }
fail() {
    printf 'FAIL  %s\n' "$1"
    failures=$((failures + 1))
    if [ -s "$work/out" ]; then
        sed 's/^/      /' "$work/out"
    fi
}
# check DESCRIPTION COMMAND [ARGS...]: one line for the result; the
# command's output is shown only when it fails. COMMAND may be a function:
# it runs in an `if`, where set -e is off, so functions chain with &&.
check() {
    local description="$1"
    shift
    if "$@" >"$work/out" 2>&1; then
        ok "$description"
    else
        fail "$description"
    fi
}

apt_updated=""
# apt_install PACKAGE: as root on Debian, apt-get install it (messages on
# stderr); false otherwise or when that fails.
apt_install() {
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        return 1
    fi
    echo "      (installing Debian package $1)" >&2
    if [ -z "$apt_updated" ]; then
        if ! DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$work/apt.log" 2>&1; then
            sed 's/^/      apt-get: /' "$work/apt.log" | tail -n 5 >&2
            return 1
        fi
        apt_updated=1
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >"$work/apt.log" 2>&1; then
        sed 's/^/      apt-get: /' "$work/apt.log" | tail -n 5 >&2
        return 1
    fi
}

# have COMMAND PACKAGE: true when COMMAND exists, after installing PACKAGE
# if needed (and possible).
have() {
    command -v "$1" >/dev/null || { apt_install "$2" && command -v "$1" >/dev/null; }
}

# A python3 that can import yaml (PyYAML), after installing python3-yaml
# for the system python3 if none can; empty when there is none.
yaml_python() {
    local candidate
    for candidate in python3 /usr/bin/python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import yaml' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    if apt_install python3-yaml && /usr/bin/python3 -c 'import yaml' 2>/dev/null; then
        echo /usr/bin/python3
    fi
}

missing() { # DESCRIPTION COMMAND PACKAGE
    echo "$2 is missing and could not be installed: apt-get install $3 (as root)" >"$work/out"
    fail "$1"
}

# --- tools ---------------------------------------------------------------
promtool=""
have promtool prometheus && promtool=promtool
compose=""
compose_fallback="docker-compose could not be installed"
if [ "${CHECK_DEPLOY_COMPOSE:-}" = python ]; then
    compose_fallback="CHECK_DEPLOY_COMPOSE=python"
elif have docker-compose docker-compose; then
    compose=docker-compose
fi
haproxy=""
have haproxy haproxy && haproxy=haproxy
python="$(yaml_python)"

versions="python3 $(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null || echo missing)"
[ -n "$promtool" ] && versions="$versions, promtool $(promtool --version 2>&1 | sed -n '1s/^promtool, version \([^ ]*\).*/\1/p')"
[ -n "$compose" ] && versions="$versions, $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"
[ -n "$haproxy" ] && versions="$versions, haproxy $(haproxy -v 2>/dev/null | sed -n '1s/^HA-\{0,1\}Proxy version \([^ ]*\).*/\1/p')"
[ -n "$python" ] && versions="$versions, PyYAML $("$python" -c 'import yaml; print(yaml.__version__)')"
echo "tools: $versions"

# --- Prometheus ----------------------------------------------------------
if [ -n "$promtool" ]; then
    check "promtool check rules docker/prometheus/alerts.yml" \
        promtool check rules docker/prometheus/alerts.yml
    check "promtool test rules docker/prometheus/alerts.test.yml" \
        promtool test rules docker/prometheus/alerts.test.yml
    check "promtool check config docker/prometheus/prometheus.yml (rule_files as mounted: next to it)" \
        promtool check config docker/prometheus/prometheus.yml
else
    missing "promtool checks of docker/prometheus/" promtool prometheus
fi

# --- Grafana -------------------------------------------------------------
dashboards=(docker/grafana/dashboards/*.json)

dashboards_parse() {
    local file
    for file in "${dashboards[@]}"; do
        python3 -m json.tool "$file" >/dev/null || return 1
    done
}

# Every panel query as a recording rule, Grafana's variables replaced
# ($__rate_interval & co by 1m, others by .*), for promtool to parse.
dashboard_promql() {
    python3 - "$work/dashboard-rules.yml" "${dashboards[@]}" <<'PY' && promtool check rules "$work/dashboard-rules.yml"
import json, re, sys

out, files = sys.argv[1], sys.argv[2:]
rules = []

def panels(node):
    for panel in node.get("panels") or []:
        yield panel
        yield from panels(panel)  # rows hold panels too

for name in files:
    with open(name, encoding="utf-8") as f:
        dashboard = json.load(f)
    for panel in panels(dashboard):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip():
                expr = re.sub(r"\$__\w+|\$\{__\w+\}", "1m", expr)
                expr = re.sub(r"\$\{\w+(:\w+)?\}|\$\w+|\[\[\w+\]\]", ".*", expr)
                rules.append((f"{name}: {panel.get('title')} {target.get('refId', '')}", expr))
if not rules:
    sys.exit(f"no PromQL queries found in {files}")
with open(out, "w", encoding="utf-8") as f:
    f.write("groups:\n  - name: dashboard_queries\n    rules:\n")
    for i, (where, expr) in enumerate(rules):
        f.write(f"      # {where}\n      - record: dashboard_query_{i}\n        expr: {json.dumps(expr)}\n")
PY
}

provisioning_parses() {
    "$python" - docker/grafana/provisioning/*/*.yml <<'PY'
import sys, yaml

for name in sys.argv[1:]:
    with open(name, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or doc.get("apiVersion") != 1:
        sys.exit(f"{name}: not a Grafana provisioning file (apiVersion: 1)")
    if not (doc.get("datasources") or doc.get("providers")):
        sys.exit(f"{name}: neither datasources nor providers")
PY
}

check "Grafana dashboards parse: python3 -m json.tool ${dashboards[*]}" dashboards_parse
if [ -n "$promtool" ]; then
    check "Grafana dashboard queries parse as PromQL (promtool check rules)" dashboard_promql
fi
if [ -n "$python" ]; then
    check "Grafana provisioning files parse (YAML, apiVersion 1)" provisioning_parses
else
    missing "Grafana provisioning files parse" "python3 yaml module" python3-yaml
fi

# --- compose -------------------------------------------------------------
# Fallback without docker-compose: YAML parse plus what `config` would catch
# in these files: services with an image or a build whose context and
# Dockerfile exist, bind-mount sources that exist, named volumes declared,
# depends_on naming services (service_healthy ones with a healthcheck).
compose_structure() {
    "$python" - "$1" <<'PY'
import os, sys, yaml

path = sys.argv[1]
base = os.path.dirname(os.path.abspath(path))
with open(path, encoding="utf-8") as f:
    doc = yaml.safe_load(f)
problems = []
services = doc.get("services") if isinstance(doc, dict) else None
if not isinstance(services, dict) or not services:
    sys.exit(f"{path}: no services mapping")
declared = set((doc.get("volumes") or {}).keys())
for name, svc in services.items():
    if not isinstance(svc, dict):
        problems.append(f"{name}: not a mapping")
        continue
    build = svc.get("build")
    if not svc.get("image") and not build:
        problems.append(f"{name}: neither image nor build")
    if build:
        context = build if isinstance(build, str) else build.get("context", ".")
        context = os.path.normpath(os.path.join(base, context))
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if not os.path.isdir(context):
            problems.append(f"{name}: build context {context} missing")
        elif not os.path.isfile(os.path.join(context, dockerfile)):
            problems.append(f"{name}: dockerfile {dockerfile} missing in {context}")
    for volume in svc.get("volumes") or []:
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            if not os.path.exists(os.path.join(base, source)):
                problems.append(f"{name}: bind mount source {source} missing")
        elif source and source not in declared:
            problems.append(f"{name}: volume {source} not declared under volumes")
    depends = svc.get("depends_on") or []
    for dep in depends:
        if dep not in services:
            problems.append(f"{name}: depends_on unknown service {dep}")
        elif isinstance(depends, dict) and (depends[dep] or {}).get("condition") == "service_healthy" \
                and "healthcheck" not in services[dep]:
            problems.append(f"{name}: waits for {dep} healthy, which has no healthcheck")
    for port in svc.get("ports") or []:
        if not str(port).replace(":", "").replace("/tcp", "").replace("/udp", "").replace(".", "").isdigit():
            problems.append(f"{name}: port {port!r} not understood")
    env = svc.get("environment") or {}
    if isinstance(env, dict):
        for key, value in env.items():
            if isinstance(value, (dict, list)):
                problems.append(f"{name}: environment {key} is not a scalar")
if problems:
    sys.exit("\n".join(f"{path}: {p}" for p in problems))
PY
}

for file in docker/compose*.yml; do
    if [ -n "$compose" ]; then
        check "docker-compose -f $file config -q" docker-compose -f "$file" config -q
    else
        skip "docker-compose -f $file config -q ($compose_fallback): python3 fallback below"
    fi
    # docker-compose 1.x config does not look at the files a compose file
    # mounts or builds from: checked here either way.
    if [ -n "$python" ]; then
        check "$file: python3 YAML parse + structural checks (build, bind mounts, volumes, depends_on)" \
            compose_structure "$file"
    elif [ -z "$compose" ]; then
        missing "$file" "docker-compose and python3 yaml" "docker-compose (or python3-yaml)"
    fi
done

# --- the old load command's sample ----------------------------------------
# `hey -m POST -D scripts/ticket.txt URL`, as the old service documented it,
# reads scripts/ticket.txt: a symbolic link to the loadtest sample, so that
# the two cannot drift apart.
old_sample() {
    [ -L scripts/ticket.txt ] && [ "$(readlink scripts/ticket.txt)" = ../loadtest/ticket.txt ] \
        && cmp scripts/ticket.txt loadtest/ticket.txt
}
check "scripts/ticket.txt (the old hey command's sample) links to loadtest/ticket.txt" old_sample

# --- HAProxy -------------------------------------------------------------
haproxy_check() {
    sed 's/ticket-ingest-[0-9]*:9098/127.0.0.1:9098/' docker/haproxy/haproxy.cfg >"$work/haproxy.cfg" \
        && haproxy -c -q -f "$work/haproxy.cfg"
}
if [ -n "$haproxy" ]; then
    check "haproxy -c docker/haproxy/haproxy.cfg (service names mapped to loopback)" haproxy_check
else
    missing "haproxy -c docker/haproxy/haproxy.cfg" haproxy haproxy
fi

# --- live /metrics -------------------------------------------------------
# The service answers the Prometheus text format 0.0.4 unless OpenMetrics is
# asked for. Should an OpenMetrics body come back anyway, its `# EOF` and
# `# UNIT` lines, which the text format does not have, are dropped before
# promtool reads it (the output line says so). promtool would still lint
# such a body: OpenMetrics names counter families without `_total`.
metrics_lint() {
    promtool check metrics <"$work/metrics.txt"
}

# Every ticket_ingest_* name in the alert rules and dashboards must be a
# family of the scraped output (histogram series: _bucket/_sum/_count).
metrics_referenced() {
    python3 - "$work/metrics.txt" docker/prometheus/alerts.yml "${dashboards[@]}" <<'PY'
import re, sys

families = {}
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            families[name] = kind

def known(name):
    if name in families:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and families.get(name[: -len(suffix)]) in ("histogram", "summary"):
            return True
    return name.endswith("_total") and families.get(name[:-6]) == "counter"

unknown = []
for path in sys.argv[2:]:
    with open(path, encoding="utf-8") as f:
        for name in sorted(set(re.findall(r"\bticket_ingest_[a-z0-9_]*[a-z0-9]", f.read()))):
            if not known(name):
                unknown.append(f"{path}: {name} is not served by the endpoint")
if unknown:
    sys.exit("\n".join(unknown))
PY
}

if [ -z "$metrics_url" ]; then
    skip "promtool check metrics: no URL given (scripts/check-deploy.sh URL, or CHECK_METRICS_URL=http://HOST:PORT/metrics)"
elif [ -z "$promtool" ]; then
    missing "promtool check metrics $metrics_url" promtool prometheus
elif ! curl -fsS --max-time 10 -H 'Accept: text/plain' -D "$work/headers" -o "$work/metrics.raw" \
    "$metrics_url" >"$work/out" 2>&1; then
    fail "GET $metrics_url"
else
    content_type="$(tr -d '\r' <"$work/headers" | sed -n 's/^[Cc]ontent-[Tt]ype: *//p' | tail -n 1)"
    note=""
    openmetrics_only="$(grep -cE '^# (EOF|UNIT )' "$work/metrics.raw" || true)"
    if [ "$openmetrics_only" -gt 0 ]; then
        grep -vE '^# (EOF|UNIT )' "$work/metrics.raw" >"$work/metrics.txt" || true
        note="; $openmetrics_only OpenMetrics-only # EOF/# UNIT lines dropped"
    else
        cp "$work/metrics.raw" "$work/metrics.txt"
    fi
    check "promtool check metrics < $metrics_url (${content_type:-no Content-Type}$note)" metrics_lint
    check "every ticket_ingest_* metric in alerts.yml and the dashboards is served by $metrics_url" \
        metrics_referenced
fi

if [ "$failures" -gt 0 ]; then
    echo "deployment checks: $failures failed"
    exit 1
fi
echo "deployment checks passed"
