#!/usr/bin/env python3
"""Stock Python HTTP clients calling tokend's credential-injecting proxy.

    python3 tests/python/proxy_callers.py URL_TCP UNIX_SOCKET PATH

Makes, in this order:
  1. requests: GET  URL_TCP + PATH
  2. httpx:    GET  PATH over the Unix socket UNIX_SOCKET (base URL http://proxy)
  3. httpx:    POST PATH over the Unix socket, body b"x" * 100000
None of them sends an Authorization header: injecting the token is the proxy's job.
Redirects are not followed (a 3xx is reported as such).
Prints one JSON line per call, in that order:
  {"lib": "requests"|"httpx", "method": "GET"|"POST", "status": int,
   "body": the reply parsed as JSON, or its text if it is not JSON}
A call that fails outright (connection refused, timeout...) prints
  {"lib", "method", "status": null, "error": "<exception>"}
instead, and the script then exits 1 after the other calls. Exit 1 also, with a
message on stderr, when requests or httpx is not installed.
"""

import json
import sys

try:
    import httpx
    import requests
except ImportError as e:
    sys.exit(f"proxy_callers.py: Python package {e.name!r} is missing: "
             "pip install -r tests/python/requirements.txt")

TIMEOUT_S = 30
POST_BODY = b"x" * 100000


def body_of(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def call(lib, method, send):
    """Runs send() -> (status, text) and prints its line; False if it raised."""
    try:
        status, text = send()
    except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
        print(json.dumps({"lib": lib, "method": method, "status": None,
                          "error": f"{type(e).__name__}: {e}"}), flush=True)
        return False
    print(json.dumps({"lib": lib, "method": method, "status": status, "body": body_of(text)}),
          flush=True)
    return True


def main(argv):
    if len(argv) != 4:
        sys.exit("usage: proxy_callers.py URL_TCP UNIX_SOCKET PATH")
    url_tcp, unix_socket, path = argv[1:]
    ok = True

    # trust_env=False: an HTTP(S)_PROXY or NO_PROXY in the environment must not send
    # these loopback calls anywhere but to the proxy under test; no .netrc either
    # (requests would add an Authorization header from it).
    with requests.Session() as s:
        s.trust_env = False

        def get():
            r = s.get(url_tcp.rstrip("/") + path, timeout=TIMEOUT_S, allow_redirects=False)
            return r.status_code, r.text
        ok &= call("requests", "GET", get)

    transport = httpx.HTTPTransport(uds=unix_socket)
    with httpx.Client(transport=transport, base_url="http://proxy", trust_env=False,
                      timeout=TIMEOUT_S) as c:
        def hget():
            r = c.get(path)
            return r.status_code, r.text

        def hpost():
            r = c.post(path, content=POST_BODY)
            return r.status_code, r.text
        ok &= call("httpx", "GET", hget)
        ok &= call("httpx", "POST", hpost)

    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
