#!/usr/bin/env bash
# Gets CLIENT's access token from tokend with `tokend get`: prints it, or with URL, calls URL with
# it as a Bearer token (the curl idiom) and prints the reply.
#
# Usage: get-token.sh CLIENT [URL]
# The socket is $TOKEND_SOCKET, else /run/tokend/tokend.sock (tokend get reads it itself).
# Exit 0; 1 when tokend gave no token (its reason is on stderr); curl's exit code when the call
# failed; 2 on bad usage.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 CLIENT [URL]" >&2
  exit 2
fi
client=$1
command -v tokend >/dev/null || { echo "$0: tokend is not on PATH (cargo install --path .)" >&2; exit 1; }

# Ask right before each use: tokend answers at once from its cache, and the token is valid.
token=$(tokend get "$client") || {
  echo "$0: no token for $client from tokend at ${TOKEND_SOCKET:-/run/tokend/tokend.sock}" >&2
  exit 1
}

if [ $# -eq 1 ]; then
  printf '%s\n' "$token"
else
  # The header goes to curl on stdin (-H @-), not on its command line, where any local user
  # could read it in ps. The shorter form, when that does not matter:
  #   curl -H "Authorization: Bearer $(tokend get "$client")" "$2"
  printf 'Authorization: Bearer %s\n' "$token" | curl --silent --show-error --fail -H @- "$2"
fi
