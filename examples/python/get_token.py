#!/usr/bin/env python3
"""Prints CLIENT's access token from tokend, like `tokend get CLIENT`.

Usage: get_token.py CLIENT
The socket is $TOKEND_SOCKET, else /run/tokend/tokend.sock. Run ./generate.sh once first.
Exit 0 with the token on stdout, or 1 with the reason on stderr.
"""

import os
import sys

try:
    import grpc
    from tokend.v1 import tokend_pb2, tokend_pb2_grpc
except ImportError as e:
    sys.exit(f"{e}: run `pip install -r requirements.txt` and `./generate.sh` in examples/python")

SOCKET = os.environ.get("TOKEND_SOCKET", "/run/tokend/tokend.sock")


def main():
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} CLIENT")
    client = sys.argv[1]
    with grpc.insecure_channel(f"unix:{SOCKET}") as channel:
        stub = tokend_pb2_grpc.TokenServiceStub(channel)
        try:
            # Without a token yet, tokend waits for the first one; the deadline bounds that wait.
            token = stub.GetToken(tokend_pb2.GetTokenRequest(client=client), timeout=10)
        except grpc.RpcError as e:
            sys.exit(f"tokend at {SOCKET}: {e.code().name}: {e.details()}")
    # In an application: ask again before every request (it is a local call, answered at once),
    # send f"{token.token_type} {token.access_token}" as the Authorization header, and on a 401
    # call RefreshToken(client, rejected_access_token) for the replacement.
    print(token.access_token)


if __name__ == "__main__":
    main()
