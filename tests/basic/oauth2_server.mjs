// A token endpoint built on @node-oauth/oauth2-server (v5), which reads the Basic header with
// the `basic-auth` package and does not form-decode id or secret: what it compares is
// base64-decoded and split at the first ':'. Client credentials grant, in-memory model, one
// client. Listens on 127.0.0.1 only; exits when stdin closes (the test harness holds it).
//
// Environment
//   BASIC_TEST_CONFIG  JSON: {"client_id": str, "client_secret": str, "ttl": seconds}
//
// Test-only route
//   GET /_test/requests  JSON array, one entry per token request: {"status": HTTP status}
//
// stdout: exactly one line once listening,
//   READY {"token_endpoint":"http://127.0.0.1:PORT/token"}

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import OAuth2Server from '@node-oauth/oauth2-server';

const { Request, Response } = OAuth2Server;
const cfg = JSON.parse(process.env.BASIC_TEST_CONFIG || '{}');
const ttl = cfg.ttl ?? 60;
const client = {
  id: cfg.client_id,
  grants: ['client_credentials'],
  accessTokenLifetime: ttl,
};

const model = {
  async getClient(clientId, clientSecret) {
    return clientId === cfg.client_id && clientSecret === cfg.client_secret ? client : null;
  },
  async getUserFromClient() {
    return { id: 'service' };
  },
  async generateAccessToken() {
    return `nodeoauth-${randomBytes(16).toString('hex')}`;
  },
  async saveToken(token, c, user) {
    return { ...token, client: c, user };
  },
  async validateScope(_user, _client, scope) {
    return scope ?? [];
  },
};
const oauth = new OAuth2Server({ model });
const requests = [];

const server = http.createServer(async (req, res) => {
  if (req.method === 'GET' && req.url === '/_test/requests') {
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify(requests));
    return;
  }
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
  const request = new Request({
    method: req.method, headers: req.headers, query: {}, body,
  });
  const response = new Response(res);
  try {
    await oauth.token(request, response);
  } catch (e) {
    response.status = e.code || 500;
    response.body = { error: e.name, error_description: e.message };
  }
  requests.push({ status: response.status });
  res.writeHead(response.status, { ...response.headers, 'content-type': 'application/json' });
  res.end(JSON.stringify(response.body));
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(`READY ${JSON.stringify({ token_endpoint: `http://127.0.0.1:${port}/token` })}\n`);
});
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
