// Loopback resource server (a protected API) for tokend's proxy tests: it accepts the
// JWT access tokens of the OIDC test server (server.mjs), as Bearer tokens or as
// DPoP-bound tokens (RFC 9449) with their proofs, and echoes what it received.
// Listens on 127.0.0.1 only. Plain node:http plus jose.
//
// Environment
//   ISSUER             the OIDC test server's issuer URL (required). Its JWKS is found
//                      through ${ISSUER}/.well-known/openid-configuration (jwks_uri) at
//                      startup and fetched with jose's createRemoteJWKSet (refetched when
//                      an unknown kid shows up).
//   AUDIENCE           the `aud` every token must contain; default urn:tokend:test-api.
//   REQUIRE_NONCE=1    DPoP proofs must carry this server's current nonce (RFC 9449 §9).
//   PORT               port to listen on; 0 or unset = pick a free one.
//   OIDC_TEST_KEEP_STDIN_OPEN=1
//                      do NOT exit when stdin closes (for running by hand in the
//                      background). Normally it exits as soon as stdin reaches EOF, so a
//                      harness that spawns it with a piped stdin never leaves an orphan.
//
// Every path except /_test/*:
//   1. Authorization: `Bearer X` or `DPoP X` (scheme case-insensitive). No such header
//      (none, or another scheme) => 401 `WWW-Authenticate: Bearer` (bare: RFC 6750 §3.1
//      says no error code when the request has no token).
//   2. X must be a JWT signed by a key of the issuer's JWKS, iss = ISSUER, aud containing
//      AUDIENCE, with an `exp` not passed (no clock tolerance) => else 401
//      `WWW-Authenticate: Bearer error="invalid_token"`.
//   3. A token whose jti was superseded (POST /_test/supersede) => 401
//      `WWW-Authenticate: <Bearer|DPoP> error="invalid_token", error_description="superseded"`
//      (DPoP when the token is DPoP-bound): what a resource server says of a revoked token.
//   4. A token without cnf.jkt must come with scheme Bearer (DPoP => 401 as in 2).
//      A token with cnf.jkt needs scheme DPoP and exactly one DPoP header holding a proof
//      that passes RFC 9449 §4.3, checked in this order; the first failure is answered 401
//      `WWW-Authenticate: DPoP error="invalid_dpop_proof", error_description="<check>"`:
//        scheme   the Authorization scheme is DPoP
//        header   exactly one DPoP header
//        proof    a JWS with typ dpop+jwt, alg ES256, a public `jwk` in its header that
//                 verifies it, string `jti`, numeric `iat` (jose EmbeddedJWK)
//        htm      = the request method
//        htu      = http://127.0.0.1:PORT + the request path, with NO query or fragment
//                   (RFC 9449 §4.2 says a client leaves them out; compared after URL
//                   normalisation, so scheme/host case and a default port do not matter)
//        iat      within 60 s of now, either way
//        jti      not seen in an earlier proof (the last 10,000 are remembered)
//        ath      = base64url(SHA-256(X))
//        jkt      the JWK SHA-256 thumbprint (RFC 7638) of the proof's jwk = cnf.jkt
//      Then, with REQUIRE_NONCE=1, a proof whose `nonce` is not the current nonce =>
//      401 `WWW-Authenticate: DPoP error="use_dpop_nonce"` and `DPoP-Nonce: <current>`.
//      The nonce is random base64url, made at startup and by POST /_test/rotate_nonce.
//   5. Accepted: 200 application/json
//        {"method", "path", "query": the raw query string (no "?") or null,
//         "headers": {lowercased name: value, or array of values when repeated},
//         "body_sha256": hex, "body_length": bytes (the body is read to its end, hashed as
//                        it streams; any size),
//         "token": {"client_id", "jti", "scope", "jkt": cnf.jkt or null},
//         "dpop": {"nonce": the proof's nonce or null} for a DPoP-bound token, else null}
//      except on these paths (GET only; other methods get the echo above):
//        /redirect                        302 `Location: /elsewhere`, empty body
//        /stream?chunks=N&delay_ms=D      200 text/plain, chunked: "chunk 0\n" ..
//                                         "chunk N-1\n", written D ms apart (3, 100)
//        /status/CODE                     that status (200-599) and {"status": CODE}
//                                         (no body for 204 and 304)
//        /bare401                         401 without any WWW-Authenticate, every time
//        /headers-out                     the echo, with the response headers
//                                         `Connection: x-hop`, `X-Hop: 1`,
//                                         `Keep-Alive: timeout=5`, `X-End-To-End: 1`
//                                         (a proxy must drop the first three)
//   Every 401 this server makes itself has the JSON body
//   {"error": str|null, "error_description": str|null}.
//
// Test-only routes (no authentication)
//   POST /_test/supersede     the jti of the last token this server accepted becomes
//                             superseded: 200 {"superseded": jti}; 404 if none accepted yet.
//   POST /_test/rotate_nonce  a new current nonce: 200 {"nonce": new}.
//   GET  /_test/requests      JSON array, one entry per request so far except /_test/*:
//                             {"method", "path" (no query), "status",
//                              "error": the WWW-Authenticate error or null,
//                              "reason": why this server refused it (free text) or null,
//                              "token_jti": the jti of the presented token (decoded, not
//                                           verified) or null,
//                              "scheme": "Bearer"|"DPoP"|null, "dpop": bool (a DPoP header
//                              was sent), "has_nonce": bool (a proof with a nonce was sent),
//                              "at_ms": Date.now() on arrival}
//   POST /_test/reset         clears that list (204); superseded tokens, seen proof jtis
//                             and the nonce are kept.
//
// stdout: exactly one line once listening,
//   READY {"url":"http://127.0.0.1:PORT","port":PORT}
// All logs go to stderr.

import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';

import {
  EmbeddedJWK, calculateJwkThumbprint, createRemoteJWKSet, decodeJwt, jwtVerify,
} from 'jose';

function fail(msg) {
  console.error(`resource server: ${msg}`);
  process.exit(2);
}

// ---------- configuration ----------
const issuer = process.env.ISSUER || fail('ISSUER (the OIDC test server issuer URL) is required');
const audience = process.env.AUDIENCE || 'urn:tokend:test-api';
const requireNonce = process.env.REQUIRE_NONCE === '1';
const IAT_WINDOW_S = 60;
const SEEN_JTI_MAX = 10_000;

let jwks;
try {
  const disco = await (await fetch(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`)).json();
  jwks = createRemoteJWKSet(new URL(disco.jwks_uri));
} catch (e) {
  fail(`cannot read ${issuer}'s discovery document: ${e.message}`);
}

// ---------- state ----------
const newNonce = () => randomBytes(32).toString('base64url');
let nonce = newNonce();
const superseded = new Set();
let lastAcceptedJti = null;
// proof jtis already used; a Set iterates in insertion order, so the first is the oldest
const seenJtis = new Set();
const requests = [];

function rememberJti(jti) {
  seenJtis.add(jti);
  if (seenJtis.size > SEEN_JTI_MAX) seenJtis.delete(seenJtis.values().next().value);
}

// A refusal: `scheme` of the challenge, its error code (null = bare challenge),
// description (null = none in the header), and a free-text reason for /_test/requests.
class Refusal extends Error {
  constructor(scheme, error, description = null, reason = description, extraHeaders = {}) {
    super(reason ?? 'no token');
    Object.assign(this, {
      scheme, error, description, reason, extraHeaders,
    });
  }
}
const invalidToken = (reason) => new Refusal('Bearer', 'invalid_token', null, reason);
const badProof = (check, reason = check) => new Refusal('DPoP', 'invalid_dpop_proof', check, reason);

function urlOrNull(s) {
  try {
    return new URL(s);
  } catch {
    return null;
  }
}

function sha256(data, encoding) {
  return createHash('sha256').update(data).digest(encoding);
}

// ---------- authentication ----------
// Returns { claims, jkt, proofNonce } for an accepted request, throws a Refusal otherwise.
async function authenticate(req, path, seen) {
  const m = /^(bearer|dpop)[ \t]+(\S+)[ \t]*$/i.exec(req.headers.authorization ?? '');
  if (!m) throw new Refusal('Bearer', null, null, req.headers.authorization ? 'unsupported Authorization' : 'no Authorization');
  const scheme = m[1].toLowerCase() === 'dpop' ? 'DPoP' : 'Bearer';
  const token = m[2];
  seen.scheme = scheme;
  try {
    seen.token_jti = decodeJwt(token).jti ?? null;
  } catch { /* not a JWT: jwtVerify says so below */ }

  let claims;
  try {
    ({ payload: claims } = await jwtVerify(token, jwks, { issuer, audience, requiredClaims: ['exp'] }));
  } catch (e) {
    throw invalidToken(`${e.code ?? 'ERR'}: ${e.message}`);
  }
  const jkt = claims.cnf?.jkt ?? null;
  if (claims.jti !== undefined && superseded.has(claims.jti)) {
    throw new Refusal(jkt ? 'DPoP' : 'Bearer', 'invalid_token', 'superseded');
  }
  if (!jkt) {
    if (scheme !== 'Bearer') throw invalidToken('DPoP scheme with a token that is not DPoP-bound');
    return { claims, jkt, proofNonce: null };
  }

  // RFC 9449 §4.3, in the order listed at the top
  if (scheme !== 'DPoP') throw badProof('scheme', 'Bearer scheme with a DPoP-bound token');
  const proofs = req.headersDistinct.dpop ?? [];
  if (proofs.length !== 1) throw badProof('header', `${proofs.length} DPoP headers`);
  let proof;
  let header;
  try {
    ({ payload: proof, protectedHeader: header } = await jwtVerify(proofs[0], EmbeddedJWK, {
      typ: 'dpop+jwt', algorithms: ['ES256'],
    }));
    if (typeof proof.jti !== 'string' || !proof.jti) throw new Error('no string jti');
    if (typeof proof.iat !== 'number') throw new Error('no numeric iat');
  } catch (e) {
    throw badProof('proof', `proof: ${e.code ?? 'ERR'}: ${e.message}`);
  }
  if (proof.htm !== req.method) throw badProof('htm', `htm ${JSON.stringify(proof.htm)}`);
  // Both sides through the WHATWG URL parser: a query or fragment, even an empty one,
  // stays in href and so fails the comparison.
  const expected = urlOrNull(`http://127.0.0.1:${port}${path}`)?.href;
  const htu = typeof proof.htu === 'string' ? urlOrNull(proof.htu)?.href : undefined;
  if (!htu || htu !== expected) throw badProof('htu', `htu ${JSON.stringify(proof.htu)}, expected ${expected}`);
  const skew = Math.floor(Date.now() / 1000) - proof.iat;
  if (Math.abs(skew) > IAT_WINDOW_S) throw badProof('iat', `iat ${skew} s away from now`);
  if (seenJtis.has(proof.jti)) throw badProof('jti', `jti ${proof.jti} replayed`);
  rememberJti(proof.jti);
  if (proof.ath !== sha256(token, 'base64url')) throw badProof('ath', `ath ${JSON.stringify(proof.ath)}`);
  if (await calculateJwkThumbprint(header.jwk) !== jkt) throw badProof('jkt', 'proof key is not the token\'s cnf.jkt');
  if (requireNonce && proof.nonce !== nonce) {
    throw new Refusal('DPoP', 'use_dpop_nonce', null, `nonce ${JSON.stringify(proof.nonce ?? null)}`, { 'DPoP-Nonce': nonce });
  }
  return { claims, jkt, proofNonce: proof.nonce ?? null };
}

// ---------- responses ----------
function json(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function challenge(r) {
  const params = [
    r.error && `error="${r.error}"`,
    r.description && `error_description="${r.description}"`,
  ].filter(Boolean).join(', ');
  return params ? `${r.scheme} ${params}` : r.scheme;
}

// The headers as received: one value, or all of them when the header was repeated.
function headersOf(req) {
  return Object.fromEntries(Object.entries(req.headersDistinct)
    .map(([name, values]) => [name, values.length === 1 ? values[0] : values]));
}

async function readBody(req) {
  const hash = createHash('sha256');
  let length = 0;
  for await (const chunk of req) {
    hash.update(chunk);
    length += chunk.length;
  }
  return { body_sha256: hash.digest('hex'), body_length: length };
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function stream(req, res, query) {
  const n = Number(query.get('chunks') ?? 3);
  const delay = Number(query.get('delay_ms') ?? 100);
  res.writeHead(200, { 'Content-Type': 'text/plain' }); // no Content-Length: chunked
  for (let i = 0; i < n && !res.destroyed; i++) {
    if (i > 0) await sleep(delay);
    res.write(`chunk ${i}\n`);
  }
  res.end();
}

// The answer to an authenticated request.
async function serve(req, res, path, searchParams, auth, body) {
  if (req.method === 'GET') {
    if (path === '/redirect') {
      res.writeHead(302, { Location: '/elsewhere', 'Content-Length': 0 });
      return res.end();
    }
    if (path === '/stream') return stream(req, res, searchParams);
    const status = /^\/status\/(\d{3})$/.exec(path);
    if (status) {
      const code = Number(status[1]);
      if (code < 200 || code > 599) return json(res, 400, { error: `status ${code} not offered` });
      if (code === 204 || code === 304) {
        res.writeHead(code);
        return res.end();
      }
      return json(res, code, { status: code });
    }
    if (path === '/bare401') return json(res, 401, { error: null, error_description: null });
  }
  const q = req.url.indexOf('?');
  const echo = {
    method: req.method,
    path,
    query: q === -1 ? null : req.url.slice(q + 1),
    headers: headersOf(req),
    ...body,
    token: {
      client_id: auth.claims.client_id ?? null,
      jti: auth.claims.jti ?? null,
      scope: auth.claims.scope ?? null,
      jkt: auth.jkt,
    },
    dpop: auth.jkt ? { nonce: auth.proofNonce } : null,
  };
  const extra = req.method === 'GET' && path === '/headers-out'
    ? {
      Connection: 'x-hop', 'X-Hop': '1', 'Keep-Alive': 'timeout=5', 'X-End-To-End': '1',
    }
    : {};
  return json(res, 200, echo, extra);
}

// ---------- test routes ----------
function testRoute(req, res, path) {
  if (path === '/_test/supersede' && req.method === 'POST') {
    if (lastAcceptedJti === null) return json(res, 404, { error: 'no token accepted yet' });
    superseded.add(lastAcceptedJti);
    return json(res, 200, { superseded: lastAcceptedJti });
  }
  if (path === '/_test/rotate_nonce' && req.method === 'POST') {
    nonce = newNonce();
    return json(res, 200, { nonce });
  }
  if (path === '/_test/requests' && req.method === 'GET') return json(res, 200, requests);
  if (path === '/_test/reset' && req.method === 'POST') {
    requests.length = 0;
    res.writeHead(204);
    return res.end();
  }
  return json(res, 404, { error: `no test route ${req.method} ${path}` });
}

// ---------- server ----------
async function handle(req, res) {
  // The path as sent (not normalised): what a proxy forwarded is what the tests see,
  // and what the proof's htu must name.
  const path = req.url.split('?', 1)[0];
  const { searchParams } = new URL(req.url.slice(path.length), 'http://127.0.0.1');
  if (path.startsWith('/_test/')) {
    req.resume();
    return testRoute(req, res, path);
  }
  const seen = {
    method: req.method,
    path,
    status: null,
    error: null,
    reason: null,
    token_jti: null,
    scheme: null,
    dpop: Boolean(req.headers.dpop),
    has_nonce: false,
    at_ms: Date.now(),
  };
  try {
    seen.has_nonce = Boolean(decodeJwt(req.headersDistinct.dpop?.[0] ?? '').nonce);
  } catch { /* no proof, or not a JWT */ }
  requests.push(seen);
  // recorded when the status is sent, not when the response ends: a test reading
  // /_test/requests right after the answer's headers (or mid-stream) sees it
  const { writeHead } = res;
  res.writeHead = (status, ...rest) => {
    seen.status = status;
    return writeHead.call(res, status, ...rest);
  };

  // The body is read before answering anything, so that an early 401 never leaves
  // a half-read request on a kept-alive connection.
  const body = await readBody(req);
  let auth;
  try {
    auth = await authenticate(req, path, seen);
  } catch (e) {
    if (!(e instanceof Refusal)) throw e;
    seen.error = e.error;
    seen.reason = e.reason;
    console.error(`resource server: ${req.method} ${path}: 401 ${e.error ?? '(no token)'}: ${e.reason}`);
    return json(res, 401, { error: e.error, error_description: e.description }, {
      'WWW-Authenticate': challenge(e), ...e.extraHeaders,
    });
  }
  if (auth.claims.jti !== undefined) lastAcceptedJti = auth.claims.jti;
  return serve(req, res, path, searchParams, auth, body);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => {
    console.error('resource server: error', req.method, req.url, e);
    if (!res.headersSent) json(res, 500, { error: 'server_error', error_description: e.message });
    else res.destroy();
  });
});
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve);
});
const { port } = server.address();
const url = `http://127.0.0.1:${port}`;

process.stdout.write(`READY ${JSON.stringify({ url, port })}\n`);
console.error(`resource server: listening on ${url}, issuer ${issuer}, audience ${audience}${requireNonce ? ', DPoP nonce required' : ''}`);

// ---------- lifetime ----------
function shutdown(why) {
  console.error(`resource server: exiting (${why})`);
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGHUP', () => shutdown('SIGHUP'));
if (process.env.OIDC_TEST_KEEP_STDIN_OPEN !== '1') {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}
