"""A token endpoint built on Authlib's AuthorizationServer (Flask integration), for tokend's
client_secret_basic tests. Authlib reads the Basic header with `urllib.parse.unquote`, so `%20`
is a space but `+` stays a `+`. Client credentials grant, one client, tokens in memory.
Listens on 127.0.0.1 only; exits when stdin closes (the test harness holds it).

Environment
  BASIC_TEST_CONFIG  JSON: {"client_id": str, "client_secret": str, "ttl": seconds}

Test-only route
  GET /_test/requests  JSON array, one entry per token request: {"status": HTTP status}

stdout: exactly one line once listening,
  READY {"token_endpoint":"http://127.0.0.1:PORT/token"}
"""

import json
import os
import secrets
import sys
import threading

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from flask import Flask, jsonify
from werkzeug.serving import make_server

CFG = json.loads(os.environ.get("BASIC_TEST_CONFIG", "{}"))


class Client(ClientMixin):
    def get_client_id(self):
        return CFG["client_id"]

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, client_secret):
        return secrets.compare_digest(client_secret, CFG["client_secret"])

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "client_secret_basic"

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"


def query_client(client_id):
    return Client() if client_id == CFG["client_id"] else None


def save_token(token, request):
    pass


app = Flask(__name__)
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": CFG.get("ttl", 60)}
server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
server.register_grant(grants.ClientCredentialsGrant)
REQUESTS = []


@app.post("/token")
def token():
    response = server.create_token_response()
    REQUESTS.append({"status": response.status_code})
    return response


@app.get("/_test/requests")
def requests():
    return jsonify(REQUESTS)


def main():
    http = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{http.server_port}/token"
    sys.stdout.write("READY " + json.dumps({"token_endpoint": endpoint}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
