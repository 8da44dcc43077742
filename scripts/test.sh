#!/usr/bin/env bash
# Runs every test, from any directory:
#   scripts/test.sh [EXTRA CARGO TEST ARGS...]
# Starts a throwaway PostgreSQL cluster in a fresh temporary directory on a
# free port, exports TEST_DATABASE_URL (the API tests create a database per
# test from it), then, stopping at the first failure: the deployment files
# (scripts/check-deploy.sh, which also installs promtool and haproxy used by
# some tests), cargo fmt --check, cargo clippy --all-targets -D warnings,
# cargo test --all-targets, then the API tests a second time on partitioned
# tables (TEST_SCHEMA=partitioned: every test database is migrated and
# partitioned with pg_partman before the test uses it). The cluster is
# stopped and deleted on exit.
# pg_partman is Debian's postgresql-<major>-partman for the cluster's
# PostgreSQL: installed when missing and run as root (otherwise the
# partitioned tests fail, naming the package).
# tests/api/schemathesis.rs runs schemathesis (PyPI), at the version it
# names: installed when missing and run as root, into a virtualenv of its
# own under ~/.cache/ticket-ingest, and exported as SCHEMATHESIS.
# tests/api/browser.rs drives headless Chromium through chromedriver:
# Debian's chromium and chromium-driver, installed when missing and run as
# root (otherwise those tests fail, naming the packages).
# tests/api/patroni.rs runs etcd and a Patroni cluster on loopback ports:
# Debian's patroni and etcd-server, installed the same way.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
if [ "${CI:-}" = "true" ]; then
    export CARGO_TERM_COLOR=never CARGO_TERM_PROGRESS_WHEN=never
fi

step() { printf '\n==> %s\n' "$*"; }

# As root the cluster runs as `postgres`, which must be able to reach it:
# /var/tmp, not a TMPDIR that may sit in root's home.
if [ "$(id -u)" -eq 0 ]; then
    tmp="$(mktemp -d /var/tmp/ticket-ingest-test.XXXXXX)"
    chmod 755 "$tmp"
else
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/ticket-ingest-test.XXXXXX")"
fi
cleanup() {
    local status=$?
    if [ "$status" -ne 0 ] && [ -f "$tmp/pg/server.log" ]; then
        echo "--- last lines of the throwaway PostgreSQL's log ($tmp/pg/server.log):" >&2
        tail -n 15 "$tmp/pg/server.log" >&2 || true
    fi
    pg_stop "$tmp/pg" || true
    rm -rf "$(pg_real_dir "$tmp/pg")" "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free port; another run may take it between the check and the start, so
# try a few.
port=55432
for attempt in 1 2 3 4 5; do
    port="$(pg_free_port "$port")"
    step "starting a throwaway PostgreSQL on 127.0.0.1:$port ($tmp)"
    if pg_start "$tmp/pg" "$port"; then
        break
    fi
    [ "$attempt" -eq 5 ] && { echo "could not start PostgreSQL" >&2; exit 1; }
    port=$((port + 1))
done
export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
echo "TEST_DATABASE_URL=$TEST_DATABASE_URL"

# schemathesis at the version tests/api/schemathesis.rs pins (its flags
# changed between versions), unless SCHEMATHESIS names one already.
schemathesis_version="$(sed -n 's/^const VERSION: &str = "\(.*\)";$/\1/p' tests/api/schemathesis.rs)"
schemathesis_venv="${XDG_CACHE_HOME:-$HOME/.cache}/ticket-ingest/schemathesis-$schemathesis_version"
if [ -n "${SCHEMATHESIS:-}" ]; then
    :
elif [ -x "$schemathesis_venv/bin/schemathesis" ]; then
    export SCHEMATHESIS="$schemathesis_venv/bin/schemathesis"
elif [ "$(schemathesis --version 2>/dev/null || true)" = "schemathesis, version $schemathesis_version" ]; then
    export SCHEMATHESIS=schemathesis
elif [ "$(id -u)" -eq 0 ]; then
    step "installing schemathesis==$schemathesis_version (PyPI) into $schemathesis_venv"
    if ! python3 -m venv "$schemathesis_venv" 2>/dev/null; then
        # Debian's python3 needs python3-venv (ensurepip) for that.
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$schemathesis_venv"
        python3 -m venv "$schemathesis_venv"
    fi
    "$schemathesis_venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version"
    export SCHEMATHESIS="$schemathesis_venv/bin/schemathesis"
else
    echo "schemathesis $schemathesis_version is missing (tests/api/schemathesis.rs will fail): as root, rerun;" \
        "or python3 -m venv DIR && DIR/bin/pip install schemathesis==$schemathesis_version, then SCHEMATHESIS=DIR/bin/schemathesis" >&2
fi

# Debian's Chromium and its WebDriver, for tests/api/browser.rs (CHROMIUM
# and CHROMEDRIVER name others).
chromium="${CHROMIUM:-/usr/bin/chromium}"
chromedriver="${CHROMEDRIVER:-chromedriver}"
if [ -x "$chromium" ] && command -v "$chromedriver" >/dev/null; then
    :
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    step "installing Debian's chromium and chromium-driver (tests/api/browser.rs)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
else
    echo "chromium and chromium-driver are missing (tests/api/browser.rs will fail):" \
        "apt-get install chromium chromium-driver, as root" >&2
fi
if [ -x "$chromium" ] && command -v "$chromedriver" >/dev/null; then
    # The Debian launcher's /dev/shm check talks on stderr: not ours.
    echo "browser: $("$chromium" --version 2>/dev/null), $("$chromedriver" --version | cut -d' ' -f1-2)"
fi

# pg_partman for the cluster's PostgreSQL (src/partition.rs and the second,
# partitioned pass of the API tests).
pg_major="$("$PG_BINDIR/pg_config" --version 2>/dev/null | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')"
pg_major="${pg_major:-$(basename "$(dirname "$PG_BINDIR")")}"
partman_package="postgresql-$pg_major-partman"
if [ -f "/usr/share/postgresql/$pg_major/extension/pg_partman.control" ]; then
    :
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    step "installing Debian's $partman_package (pg_partman)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$partman_package" >/dev/null
else
    echo "$partman_package is missing (the partitioned tests will fail): apt-get install $partman_package, as root" >&2
fi

# Debian's patroni and etcd-server, for tests/api/patroni.rs (a Patroni
# cluster on loopback ports, stopped by the test).
if command -v patroni >/dev/null && command -v patronictl >/dev/null && command -v etcd >/dev/null; then
    :
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    step "installing Debian's patroni and etcd-server (tests/api/patroni.rs)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patroni etcd-server >/dev/null
    # The package's own etcd service is not ours: the test runs its own.
    if command -v systemctl >/dev/null; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi
else
    echo "patroni and etcd-server are missing (tests/api/patroni.rs will fail):" \
        "apt-get install patroni etcd-server, as root" >&2
fi

step "deployment files: scripts/check-deploy.sh"
scripts/check-deploy.sh
step "cargo fmt --check"
cargo fmt --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
step "cargo test --all-targets${*:+ $*}"
cargo test --all-targets "$@"
step "the API tests on partitioned tables: TEST_SCHEMA=partitioned cargo test --test api${*:+ $*}"
TEST_SCHEMA=partitioned cargo test --test api "$@"
step "all checks passed"
