#!/usr/bin/env python3
"""Cross-language check of tokend's gRPC API from a Python client (grpcio).

Usage:
    python3 tests/python/tokend_client_check.py --socket PATH --client NAME \
        [--proto-root DIR] [--watch N] [--calls N]

Against a running daemon, over one channel made with grpcio's defaults (no authority override;
grpcio sends the socket path as the HTTP/2 :authority), it:
  * generates Python stubs from proto/tokend/v1/tokend.proto at run time (grpc_tools.protoc,
    into a temporary directory), plus a minimal grpc.health.v1 stub from a proto embedded below;
  * GetToken(NAME): non-empty access_token, token_type "Bearer", expires_at in the future;
  * ListClients: NAME is listed;
  * GetToken("no-such-client"): fails with NOT_FOUND;
  * grpc.health.v1.Health/Check("tokend.v1.TokenService"): SERVING;
  * with --watch N (N >= 1): WatchToken(NAME) yields N+1 tokens (the current one, then N
    rotations), each with a new access_token and a later-or-equal expires_at, within 60 s;
  * with --calls N: N more GetToken(NAME) calls, one after another on the same connection (so the
    HPACK dynamic table of a long-lived connection wraps many times).

On success prints exactly one line of JSON to stdout (never the token itself):
    {"ok": true, "client": NAME, "token_sha256_prefix": "<8 hex>", "scopes": [...],
     "expires_at": <unix seconds>, "watched": N, "calls": N}
where the token fields describe the token GetToken returned.

Exit codes: 0 success; 1 any check or RPC failed (one-line reason on stderr), including bad
usage; 2 grpcio / grpcio-tools / protobuf are not installed.

Only the standard library and grpcio (with grpcio-tools and protobuf, see requirements.txt).
"""

import argparse
import hashlib
import json
import os
import stat
import sys
import tempfile
import time

EXIT_FAIL = 1
EXIT_MISSING_DEPS = 2

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(SCRIPT_DIR))
REQUIREMENTS = os.path.join(SCRIPT_DIR, "requirements.txt")

SERVICE_NAME = "tokend.v1.TokenService"
UNKNOWN_CLIENT = "no-such-client"
RPC_DEADLINE_S = 10.0
WATCH_DEADLINE_S = 60.0

# The subset of grpc/health/v1/health.proto this check needs (Check only). It is wire-compatible
# with the standard service: the RPC path is /grpc.health.v1.Health/Check and the messages are
# the same. grpc_tools does not bundle health.proto, and generating it here saves depending on
# grpcio-health-checking (and its own protobuf pin). The file name is deliberately not
# grpc/health/v1/health.proto: a generated `grpc.health.v1` Python package would collide with
# the installed `grpc` package.
HEALTH_PROTO_NAME = "tokend_check_health.proto"
HEALTH_PROTO = """\
syntax = "proto3";

package grpc.health.v1;

message HealthCheckRequest {
  string service = 1;
}

message HealthCheckResponse {
  enum ServingStatus {
    UNKNOWN = 0;
    SERVING = 1;
    NOT_SERVING = 2;
    SERVICE_UNKNOWN = 3;
  }
  ServingStatus status = 1;
}

service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
}
"""


class CheckFailed(Exception):
    """A check failed; the message is the one-line reason printed on stderr."""


class _Parser(argparse.ArgumentParser):
    # Usage errors exit 1, not argparse's 2: exit code 2 means "dependencies missing" here.
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_FAIL)


def parse_args(argv):
    p = _Parser(description="Check tokend's gRPC API from Python.")
    p.add_argument("--socket", required=True, help="tokend's Unix socket")
    p.add_argument("--client", required=True, help="a configured client name")
    p.add_argument(
        "--proto-root",
        default=os.path.join(REPO_ROOT, "proto"),
        help="directory holding tokend/v1/tokend.proto (default: <repo>/proto)",
    )
    p.add_argument(
        "--watch",
        type=int,
        default=0,
        metavar="N",
        help="also watch for N token rotations (default 0: no watch)",
    )
    p.add_argument(
        "--calls",
        type=int,
        default=0,
        metavar="N",
        help="also make N GetToken calls on the same connection (default 0)",
    )
    args = p.parse_args(argv)
    if args.watch < 0:
        p.error("--watch must be >= 0")
    if args.calls < 0:
        p.error("--calls must be >= 0")
    if not args.client:
        p.error("--client must not be empty")
    return args


def import_deps():
    """Imports grpc and grpc_tools, or exits 2 saying what to install."""
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
        from grpc_tools import protoc  # noqa: F401
    except ImportError as e:
        print(
            f"missing Python dependency ({e}); run: "
            f"pip install -r tests/python/requirements.txt "
            f"(from the repository root; the file is {REQUIREMENTS})",
            file=sys.stderr,
        )
        sys.exit(EXIT_MISSING_DEPS)


def generate_stubs(proto_root, out_dir):
    """Runs protoc into out_dir and returns the imported modules (pb, pb_grpc, hpb, hpb_grpc)."""
    import grpc_tools
    from grpc_tools import protoc

    tokend_proto = os.path.join(proto_root, "tokend", "v1", "tokend.proto")
    if not os.path.isfile(tokend_proto):
        raise CheckFailed(f"proto not found: {tokend_proto} (check --proto-root)")

    health_src = os.path.join(out_dir, "_health_src")
    os.makedirs(health_src)
    with open(os.path.join(health_src, HEALTH_PROTO_NAME), "w") as f:
        f.write(HEALTH_PROTO)

    # google/protobuf/timestamp.proto and friends ship inside grpc_tools.
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    for include, target in ((proto_root, "tokend/v1/tokend.proto"), (health_src, HEALTH_PROTO_NAME)):
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{include}",
                f"-I{well_known}",
                f"--python_out={out_dir}",
                f"--grpc_python_out={out_dir}",
                target,
            ]
        )
        if rc != 0:
            raise CheckFailed(f"grpc_tools.protoc failed (exit {rc}) on {target} under {include}")

    # protoc writes tokend/v1/tokend_pb2.py and tokend/v1/tokend_pb2_grpc.py (which imports
    # `from tokend.v1 import tokend_pb2`). Make both directories regular packages so nothing
    # else named `tokend` on sys.path can shadow them.
    for pkg in ("tokend", os.path.join("tokend", "v1")):
        open(os.path.join(out_dir, pkg, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)

    from tokend.v1 import tokend_pb2, tokend_pb2_grpc
    import tokend_check_health_pb2
    import tokend_check_health_pb2_grpc

    return tokend_pb2, tokend_pb2_grpc, tokend_check_health_pb2, tokend_check_health_pb2_grpc


def ts_seconds(ts):
    return ts.seconds + ts.nanos / 1e9


def rpc_error(what, err):
    import grpc

    code = err.code() if isinstance(err, grpc.Call) else None
    name = code.name if code is not None else "?"
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    return CheckFailed(f"{what} failed: {name}: {details}")


def check_token(what, tok, client):
    """Checks one Token message; never puts the token itself into a message."""
    if tok.client and tok.client != client:
        raise CheckFailed(f"{what}: token is for client {tok.client!r}, expected {client!r}")
    if not tok.access_token:
        raise CheckFailed(f"{what}: access_token is empty")
    if tok.token_type != "Bearer":
        raise CheckFailed(f"{what}: token_type is {tok.token_type!r}, expected 'Bearer'")
    if not tok.HasField("expires_at"):
        raise CheckFailed(f"{what}: expires_at is unset")


def run(args, pb, pb_grpc, hpb, hpb_grpc):
    import grpc

    sock = args.socket
    if not os.path.exists(sock):
        raise CheckFailed(f"socket {sock} does not exist (is tokend running? check --socket)")
    if not stat.S_ISSOCK(os.stat(sock).st_mode):
        raise CheckFailed(f"{sock} is not a Unix socket (check --socket)")

    channel = grpc.insecure_channel("unix:" + sock)
    with channel:
        stub = pb_grpc.TokenServiceStub(channel)

        # 1. GetToken
        try:
            tok = stub.GetToken(pb.GetTokenRequest(client=args.client), timeout=RPC_DEADLINE_S)
        except grpc.RpcError as e:
            raise rpc_error(f"GetToken(client={args.client!r}) on unix:{sock}", e)
        check_token(f"GetToken({args.client!r})", tok, args.client)
        now = time.time()
        if ts_seconds(tok.expires_at) <= now:
            raise CheckFailed(
                f"GetToken({args.client!r}): expires_at {tok.expires_at.seconds} is not in the "
                f"future (now {int(now)})"
            )

        # 2. ListClients
        try:
            listed = stub.ListClients(pb.ListClientsRequest(), timeout=RPC_DEADLINE_S)
        except grpc.RpcError as e:
            raise rpc_error("ListClients", e)
        names = [c.client for c in listed.clients]
        if args.client not in names:
            raise CheckFailed(f"ListClients: {args.client!r} not among {names}")

        # 3. Unknown client -> NOT_FOUND
        try:
            stub.GetToken(pb.GetTokenRequest(client=UNKNOWN_CLIENT), timeout=RPC_DEADLINE_S)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise CheckFailed(
                    f"GetToken({UNKNOWN_CLIENT!r}): expected NOT_FOUND, got "
                    f"{e.code().name}: {e.details()}"
                )
        else:
            raise CheckFailed(f"GetToken({UNKNOWN_CLIENT!r}) succeeded; expected NOT_FOUND")

        # 4. Health
        try:
            health = hpb_grpc.HealthStub(channel).Check(
                hpb.HealthCheckRequest(service=SERVICE_NAME), timeout=RPC_DEADLINE_S
            )
        except grpc.RpcError as e:
            raise rpc_error(f"Health/Check({SERVICE_NAME!r})", e)
        if health.status != hpb.HealthCheckResponse.SERVING:
            status = hpb.HealthCheckResponse.ServingStatus.Name(health.status)
            raise CheckFailed(f"Health/Check({SERVICE_NAME!r}): {status}, expected SERVING")

        # 5. WatchToken
        if args.watch >= 1:
            watch_tokens(stub, pb, args.client, args.watch)

        # 6. Many calls on one connection
        for i in range(args.calls):
            try:
                t = stub.GetToken(pb.GetTokenRequest(client=args.client), timeout=RPC_DEADLINE_S)
            except grpc.RpcError as e:
                raise rpc_error(f"GetToken call {i + 1} of {args.calls}", e)
            check_token(f"GetToken call {i + 1} of {args.calls}", t, args.client)

    return {
        "ok": True,
        "client": args.client,
        "token_sha256_prefix": hashlib.sha256(tok.access_token.encode()).hexdigest()[:8],
        "scopes": list(tok.scopes),
        "expires_at": tok.expires_at.seconds,
        "watched": args.watch,
        "calls": args.calls,
    }


def watch_tokens(stub, pb, client, n):
    """Reads n+1 tokens from WatchToken within WATCH_DEADLINE_S overall."""
    import grpc

    want = n + 1
    seen = []  # sha256 digests only: never keep tokens in messages
    last_exp = None
    # The call's deadline is the overall 60 s budget for all n+1 tokens.
    call = stub.WatchToken(pb.WatchTokenRequest(client=client), timeout=WATCH_DEADLINE_S)
    try:
        for tok in call:
            i = len(seen)
            what = f"WatchToken({client!r}) token #{i}"
            check_token(what, tok, client)
            digest = hashlib.sha256(tok.access_token.encode()).hexdigest()
            if digest in seen:
                raise CheckFailed(f"{what}: same access_token as token #{seen.index(digest)}")
            exp = ts_seconds(tok.expires_at)
            if last_exp is not None and exp < last_exp:
                raise CheckFailed(
                    f"{what}: expires_at {tok.expires_at.seconds} is earlier than the previous "
                    f"token's {int(last_exp)}"
                )
            seen.append(digest)
            last_exp = exp
            if len(seen) == want:
                return
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CheckFailed(
                f"WatchToken({client!r}): got {len(seen)} of {want} tokens within "
                f"{int(WATCH_DEADLINE_S)} s"
            )
        raise rpc_error(f"WatchToken({client!r}) after {len(seen)} of {want} tokens", e)
    finally:
        call.cancel()
    raise CheckFailed(f"WatchToken({client!r}): stream ended after {len(seen)} of {want} tokens")


def one_line(text):
    return " ".join(text.split())


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import_deps()
    try:
        with tempfile.TemporaryDirectory(prefix="tokend-pycheck-") as out_dir:
            mods = generate_stubs(os.path.abspath(args.proto_root), out_dir)
            result = run(args, *mods)
    except CheckFailed as e:
        print(f"FAIL: {one_line(str(e))}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as e:  # anything unexpected is a failure too, still on one line
        print(f"FAIL: unexpected {type(e).__name__}: {one_line(str(e))}", file=sys.stderr)
        return EXIT_FAIL
    print(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
