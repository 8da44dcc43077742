#!/usr/bin/env bash
# Sends one ticket, bytes exactly as in the file, and prints the answer.
#   scripts/send_ticket.sh [FILE] [URL] [-k IDEMPOTENCY_KEY] [-z]
# FILE defaults to loadtest/ticket.txt, URL to http://localhost:9098/ticket;
# -z sends it gzip-encoded.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
file="$repo/loadtest/ticket.txt"
url="http://localhost:9098/ticket"
key=""
gzip_body=false
positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        -k) key="$2"; shift 2 ;;
        -z) gzip_body=true; shift ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        *) positional+=("$1"); shift ;;
    esac
done
[ "${#positional[@]}" -ge 1 ] && file="${positional[0]}"
[ "${#positional[@]}" -ge 2 ] && url="${positional[1]}"

headers=(-H "Content-Type: text/plain")
[ -n "$key" ] && headers+=(-H "Idempotency-Key: $key")
if $gzip_body; then
    gzip -c "$file" | curl -sS -i "${headers[@]}" -H "Content-Encoding: gzip" --data-binary @- "$url"
else
    curl -sS -i "${headers[@]}" --data-binary "@$file" "$url"
fi
echo
