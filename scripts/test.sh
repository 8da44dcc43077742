#!/usr/bin/env bash
# Runs every test: the deployment files (scripts/check-deploy.sh, which also
# installs promtool for the metrics test), formatting, lints, unit tests, the
# parser corpus and the API tests against a real PostgreSQL. A throwaway cluster is started in a
# temporary directory (each API test creates its own database in it) and
# removed at the end. Extra arguments go to `cargo test`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
if [ "${CI:-}" = "true" ]; then export CARGO_TERM_COLOR=never; fi

tmp="$(mktemp -d /var/tmp/ticket-ingest-test.XXXXXX)"
chmod 755 "$tmp"
cleanup() {
    pg_stop "$tmp/pg"
    rm -rf "$(readlink -f "$tmp/pg" 2>/dev/null || true)" "$tmp"
}
trap cleanup EXIT

port="$(pg_free_port 55432)"
echo "==> starting a throwaway PostgreSQL on 127.0.0.1:$port"
pg_start "$tmp/pg" "$port"
export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"

echo "==> deployment files (compose, alert rules, dashboard)"
scripts/check-deploy.sh
echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> cargo test --all-targets"
cargo test --all-targets "$@"
