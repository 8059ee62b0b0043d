#!/usr/bin/env python3
"""Prints a line for CLIENT's current token, then one per rotation: a fingerprint (the first 8
hex digits of the token's SHA-256, as tokend logs it) and the expiry. Never the token itself.

Usage: watch_token.py CLIENT [--count N]    (stop after N rotations; default: run until ^C)
The socket is $TOKEND_SOCKET, else /run/tokend/tokend.sock. Run ./generate.sh once first.
"""

import argparse
import hashlib
import os
import sys
from datetime import datetime, timezone

try:
    import grpc
    from tokend.v1 import tokend_pb2, tokend_pb2_grpc
except ImportError as e:
    sys.exit(f"{e}: run `pip install -r requirements.txt` and `./generate.sh` in examples/python")

SOCKET = os.environ.get("TOKEND_SOCKET", "/run/tokend/tokend.sock")


def describe(token):
    fingerprint = hashlib.sha256(token.access_token.encode()).hexdigest()[:8]
    expires = datetime.fromtimestamp(token.expires_at.seconds, timezone.utc)
    return f"token sha256:{fingerprint} expires {expires:%Y-%m-%dT%H:%M:%SZ}"


def main():
    parser = argparse.ArgumentParser(description="Watch a tokend client's token rotations.")
    parser.add_argument("client")
    parser.add_argument("--count", type=int, metavar="N", help="stop after N rotations")
    args = parser.parse_args()

    with grpc.insecure_channel(f"unix:{SOCKET}") as channel:
        stub = tokend_pb2_grpc.TokenServiceStub(channel)
        # No deadline: the stream stays open for as long as we read it.
        stream = stub.WatchToken(tokend_pb2.WatchTokenRequest(client=args.client))
        try:
            for n, token in enumerate(stream):
                print("rotated" if n else "current", describe(token), flush=True)
                if n == args.count:
                    stream.cancel()
                    return
        except grpc.RpcError as e:
            sys.exit(f"tokend at {SOCKET}: {e.code().name}: {e.details()}")
        sys.exit(f"tokend at {SOCKET} ended the stream (shutting down?)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
