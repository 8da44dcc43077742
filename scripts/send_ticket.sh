#!/usr/bin/env bash
# Sends one ticket, bytes exactly as in the file, and prints the HTTP status
# and the response body:
#   scripts/send_ticket.sh [FILE] [URL] [-k IDEMPOTENCY_KEY] [-z]
# FILE defaults to loadtest/ticket.txt, URL to http://localhost:9098/ticket;
# -k sets an Idempotency-Key header, -z sends the body gzip-encoded.
# Exits 0 on a 2xx answer, 1 otherwise.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
usage() { sed -n '2,7p' "$0" >&2; exit 2; }

file="$repo/loadtest/ticket.txt"
url="http://localhost:9098/ticket"
key=""
gzip_body=false
positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        -k) [ $# -ge 2 ] || usage; key="$2"; shift 2 ;;
        -k*) key="${1#-k}"; shift ;;
        -z) gzip_body=true; shift ;;
        -h | --help) usage ;;
        -*) echo "unknown option: $1" >&2; usage ;;
        *) positional+=("$1"); shift ;;
    esac
done
[ "${#positional[@]}" -le 2 ] || usage
[ "${#positional[@]}" -ge 1 ] && file="${positional[0]}"
[ "${#positional[@]}" -ge 2 ] && url="${positional[1]}"
[ -f "$file" ] || { echo "no such file: $file" >&2; exit 2; }

args=(-sS -w '\n%{http_code}' -H "Content-Type: text/plain")
[ -n "$key" ] && args+=(-H "Idempotency-Key: $key")
if $gzip_body; then
    answer="$(gzip -c "$file" | curl "${args[@]}" -H "Content-Encoding: gzip" --data-binary @- "$url")"
else
    answer="$(curl "${args[@]}" --data-binary "@$file" "$url")"
fi
status="${answer##*$'\n'}"
body="${answer%$'\n'*}"
echo "HTTP $status"
echo "$body"
[[ "$status" == 2* ]]
