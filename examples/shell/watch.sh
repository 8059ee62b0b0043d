#!/usr/bin/env bash
# Prints a line for CLIENT's current token, then one whenever tokend hands out a new one: a
# fingerprint (the first 8 hex digits of the token's SHA-256, as tokend logs it), never the token.
# A shell script that runs for long does the same: `tokend get` before every use, no caching.
#
# Usage: watch.sh CLIENT [--count N]    (stop after N rotations; default: until ^C)
# The socket is $TOKEND_SOCKET, else /run/tokend/tokend.sock. Polls once a second.
set -euo pipefail

usage() { echo "usage: $0 CLIENT [--count N]" >&2; exit 2; }
[ $# -eq 1 ] || [ $# -eq 3 ] || usage
client=$1
count=-1
if [ $# -eq 3 ]; then
  [ "$2" = --count ] && [[ $3 =~ ^[0-9]+$ ]] || usage
  count=$3
fi
command -v tokend >/dev/null || { echo "$0: tokend is not on PATH (cargo install --path .)" >&2; exit 1; }

last=
rotations=0
while :; do
  token=$(tokend get "$client") || {
    echo "$0: no token for $client from tokend at ${TOKEND_SOCKET:-/run/tokend/tokend.sock}" >&2
    exit 1
  }
  fingerprint=$(printf '%s' "$token" | sha256sum | cut -c1-8)
  if [ -z "$last" ]; then
    echo "current token sha256:$fingerprint"
  elif [ "$fingerprint" != "$last" ]; then
    echo "rotated token sha256:$fingerprint"
    rotations=$((rotations + 1))
  fi
  last=$fingerprint
  [ "$rotations" -ne "$count" ] || exit 0
  sleep 1
done
