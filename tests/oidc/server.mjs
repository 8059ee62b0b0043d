// Real OAuth 2.0 / OpenID Connect server for tokend's integration tests,
// built on the npm package `oidc-provider` (v9). Listens on 127.0.0.1 only.
//
// Environment
//   PORT               port to listen on; 0 or unset = pick a free one.
//   OIDC_TEST_CONFIG   JSON configuration (schema below); unset = "{}".
//   OIDC_TEST_KEEP_STDIN_OPEN=1
//                      do NOT exit when stdin closes (for running by hand
//                      in the background). Normally the server exits as soon
//                      as its stdin reaches EOF, so a test harness that spawns
//                      it with a piped stdin never leaves an orphan behind.
//
// OIDC_TEST_CONFIG schema (every key optional):
//   {
//     "accessTokenTtl": 60,          // integer seconds >= 1: lifetime of every
//                                    // access token (JWT `exp`, reply `expires_in`)
//     "refreshTokenTtl": 86400,      // integer seconds >= 1: refresh token lifetime
//     "refreshTokenRotation": false, // true = every refresh_token grant returns a
//                                    // new refresh token and consumes the old one
//                                    // (re-using a consumed one => invalid_grant and
//                                    // the whole grant is revoked)
//     "resource": "urn:tokend:test-api", // resource indicator = JWT `aud`, used when
//                                    // the request carries no `resource` parameter
//     "signingAlg": "RS256",         // "RS256" or "ES256"; key generated at startup
//     "refreshTokenReuseGrace": 0,   // seconds: a rotated (consumed) refresh token presented
//                                    // again within this time is accepted in place of its
//                                    // successor, as Okta's grace period and Auth0's reuse
//                                    // interval do; such requests are marked
//                                    // "reused_within_grace" in /_test/requests. 0 = strict.
//     "tokenDelayMs": 0,             // delay before the token endpoint processes a request
//                                    // (widens the window in which a client can die mid-request)
//     "dpopNonce": false,            // true: the token endpoint requires a DPoP nonce (RFC 9449
//                                    // section 8): a DPoP proof without one, or with a stale one,
//                                    // gets 400 {"error":"use_dpop_nonce"} and a `DPoP-Nonce`
//                                    // header to retry with. false: no nonces at all (a proof
//                                    // carrying one is invalid_dpop_proof). DPoP itself is always
//                                    // on: a token request with a `DPoP` proof header gets a
//                                    // DPoP-bound access token (token_type "DPoP", `cnf.jkt` in
//                                    // the JWT); without one, a Bearer token. oidc-provider's
//                                    // rules: a proof without nonce needs `iat` within 300 s of
//                                    // now; one with a valid nonce has its `iat` not checked. A
//                                    // nonce is minted each minute and accepted for 3-4 minutes;
//                                    // a 200 carries `DPoP-Nonce` when the proof's was not the
//                                    // current one. A repeated proof `jti` is invalid_grant.
//                                    // Refresh tokens are bound to the key only for public
//                                    // clients (auth method none). The federation grants
//                                    // below ignore DPoP (Bearer tokens).
//     "clientCredentialsDefaultScope": false,
//                                    // false (oidc-provider's own behaviour): a
//                                    // client_credentials request without `scope`
//                                    // gets a token with NO scope (no `scope` in the
//                                    // reply nor in the JWT). true: such a request is
//                                    // treated as asking for the client's full scope.
//     "clientAuthSigningAlgs": ["RS256", "ES256", "ES384", "EdDSA", "HS256", "HS512"],
//                                    // JWS algs accepted in client assertions
//                                    // (private_key_jwt, client_secret_jwt); unset =
//                                    // oidc-provider's default (HS256 RS256 PS256 ES256
//                                    // Ed25519 EdDSA).
//     "enforceAuthMethod": true,     // true: a client registered for client_secret_basic
//                                    // that sends client_secret in the body (or vice
//                                    // versa) gets 401 invalid_client. Stock
//                                    // oidc-provider accepts either (false).
//     "https": {                     // serve https (RFC 8705 mTLS) instead of http:
//       "cert": "/path/server.pem",  // server certificate chain (PEM file) for 127.0.0.1
//       "key": "/path/server.key",   // its private key (PEM file)
//       "ca": "/path/ca.pem",        // CA that issues tls_client_auth client certificates;
//                                    // a client certificate is requested on every
//                                    // connection, never required (rejectUnauthorized off)
//       "selfSignedCerts": {"self-client": "/path/self.pem"}
//                                    // client_id -> its self-signed certificate (PEM
//                                    // file), registered as the client's `jwks` (x5c)
//     },                             // features.mTLS is on (tlsClientAuth,
//                                    // selfSignedTlsClientAuth, certificateBoundAccessTokens);
//                                    // tls_client_auth_subject_dn / _san_dns match the
//                                    // certificate's subject / DNS SANs.
//     "deviceFlow": false,           // true: the device authorization grant (RFC 8628,
//                                    // oidc-provider's features.deviceFlow); the user
//                                    // enters the code at /device, signs in and consents
//                                    // on the devInteractions pages
//     "deviceCodeTtl": 600,          // integer seconds >= 1: a device code's lifetime
//     "federation": {                // workload identity federation: the grants
//       "jwksFile": "/path/jwks.json", // token exchange (RFC 8693; grant_types entry
//       "issuer": "https://platform.test", // urn:ietf:params:oauth:grant-type:token-exchange)
//       "audience": "tokend-test",   // and JWT bearer (RFC 7523 2.1; ...:grant-type:jwt-bearer).
//                                    // subject_token, actor_token and assertion must be JWTs
//                                    // signed by a key of the JWK Set in jwksFile (read anew at
//                                    // every request), with this iss and aud, exp not passed.
//                                    // Refused: token exchange invalid_request, jwt-bearer
//                                    // invalid_grant, each with an error_description.
//                                    // requested_token_type: ...:token-type:access_token (the
//                                    // default; token_type Bearer) or ...:token-type:jwt
//                                    // (token_type N_A); others are invalid_request. The issued
//                                    // token is an access token of this server (as for
//                                    // client_credentials: `scope` within the client's, `resource`
//                                    // the resource indicator, `audience` its `aud` if given) with
//                                    // claims "subject": {iss, sub, jti} and, with an actor token,
//                                    // "act": {iss, sub}.
//       "ignoreRequestedTokenType": false // true: issue an access token whatever was
//     },                             // requested (issued_token_type ...:access_token), as
//                                    // some providers do.
//     "clients": [                   // oidc-provider client metadata (RFC 7591 names),
//       {                            // passed through as-is, e.g.
//         "client_id": "basic-client",
//         "client_secret": "s3cr:t+%é",
//         "token_endpoint_auth_method": "client_secret_basic", // or client_secret_post
//         "grant_types": ["client_credentials"],
//         // or ["authorization_code","refresh_token"] + "redirect_uris": [...]
//         "scope": "api:read api:write"   // space separated allow-list
//       }
//     ]
//   }
//   A client with "jwks_uri": "self" gets its keys (the "jwks" given with it) from
//   this server's /_test/jwks/<client_id>, which PUT replaces (see the test-only
//   routes): key rotation without a restart.
//   Client defaults added here: clients without the authorization_code grant get
//   "response_types": [] and "redirect_uris": []. Every scope named by any client
//   (plus openid, offline_access) is a known scope; asking for one outside the
//   client's own `scope` is an `invalid_scope` error. Non-OIDC scopes (all but
//   openid/offline_access) are the resource server's scopes and end up in the
//   access token's `scope`.
//
//   Client secrets: oidc-provider itself only accepts secrets made of printable
//   ASCII (RFC 6749 App. A: client-secret = *VSCHAR, %x20-7E). So that tokend's
//   encoding can be tested with non-ASCII secrets too, a secret outside VSCHAR is
//   stored in oidc-provider under a substitute, and a small middleware decodes
//   the client's credentials strictly as RFC 6749 §2.3.1 says (Basic: base64 of
//   form-urlencoded id ":" form-urlencoded secret, which must be pure ASCII;
//   client_secret_post: the form body) and swaps in the substitute when the
//   secret matches. Anything else (wrong secret, unencoded secret) fails as it
//   would on oidc-provider.
//
// Test-only routes
//   GET  /_test/requests  JSON array, one entry per token-endpoint request so far:
//                         {"client_id": str|null, "grant_type": str|null,
//                          "at_ms": Date.now() on arrival, "status": HTTP status,
//                          "auth_method": "client_secret_basic"|"client_secret_post"|"none"
//                                         |"private_key_jwt"|"client_secret_jwt",
//                          "assertion": {"header": {...}, "claims": {...}} (decoded, NOT
//                                         verified; client assertions only),
//                          "dpop": null, or when the request carried a DPoP header, its proof
//                                  decoded (NOT verified): {"jkt": JWK SHA-256 thumbprint
//                                  (RFC 7638) of the header's `jwk`, "nonce": str|null,
//                                  "htu", "htm", "iat"}; {"undecodable": true} if it is not
//                                  a JWT with a jwk,
//                          "federation": (requests with a subject_token, actor_token, assertion
//                                         or client_assertion only) {
//                            "<that parameter>": {"sha256": hex of the whole token, "iss", "sub",
//                                         "aud", "exp", "iat", "jti" (as decoded, NOT verified;
//                                         or "not_a_jwt": true), "verified": bool (the grants)},
//                            "outcome": "issued"|"rejected", "reason": why this server refused
//                            it, "error"/"error_description": what it answered, and for the
//                            grants the parameters "scope", "audience", "resource",
//                            "subject_token_type", "requested_token_type", "issued_token_type"}}
//   POST /_test/reset     clears that list (204).
//   PUT  /_test/jwks/ID   replaces the JWK Set of a client with "jwks_uri": "self"
//                         (JSON body {"keys": [...]}; 204); oidc-provider reads it
//                         anew at the client's next assertion.
//
// Authorization code flow: the login and consent pages are oidc-provider's
// devInteractions. Login accepts any login/password (the login becomes `sub`);
// consent grants everything asked. Refresh tokens are issued to every client that
// has the refresh_token grant (offline_access or not, prompt=consent or not).
//
// stdout: exactly one line once listening,
//   READY {"issuer":"http://127.0.0.1:PORT","token_endpoint":"http://127.0.0.1:PORT/token","port":PORT}
// All logs go to stderr.

import {
  X509Certificate, createHash, createPublicKey, generateKeyPairSync, randomBytes,
} from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';

// oidc-provider prints its NOTICEs with console.info (stdout): keep stdout for
// the READY line only. Done before oidc-provider is loaded (dynamic import).
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const { default: Provider, errors } = await import('oidc-provider');

const OIDC_SCOPES = new Set(['openid', 'offline_access']);
const VSCHAR = /^[\x20-\x7E]*$/;

function fail(msg) {
  console.error(`oidc test server: ${msg}`);
  process.exit(2);
}

// ---------- configuration ----------
let cfg;
try {
  cfg = JSON.parse(process.env.OIDC_TEST_CONFIG || '{}');
} catch (e) {
  fail(`OIDC_TEST_CONFIG is not valid JSON: ${e.message}`);
}
if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) fail('OIDC_TEST_CONFIG must be a JSON object');

function posInt(name, dflt) {
  const v = cfg[name] ?? dflt;
  if (!Number.isInteger(v) || v < 1) fail(`${name} must be an integer >= 1, got ${JSON.stringify(v)}`);
  return v;
}
const accessTokenTtl = posInt('accessTokenTtl', 60);
const refreshTokenTtl = posInt('refreshTokenTtl', 86400);
const refreshTokenRotation = Boolean(cfg.refreshTokenRotation);
const clientCredentialsDefaultScope = Boolean(cfg.clientCredentialsDefaultScope);
const reuseGraceMs = Number(cfg.refreshTokenReuseGrace ?? 0) * 1000;
const tokenDelayMs = Number(cfg.tokenDelayMs ?? 0);
// consumed refresh token -> { next: its successor, at: when it was rotated }
const successors = new Map();
const enforceAuthMethod = cfg.enforceAuthMethod ?? true;
const resourceIndicator = cfg.resource ?? 'urn:tokend:test-api';
const signingAlg = cfg.signingAlg ?? 'RS256';
const deviceFlow = Boolean(cfg.deviceFlow);
const deviceCodeTtl = posInt('deviceCodeTtl', 600);
const dpopNonce = Boolean(cfg.dpopNonce);
if (!['RS256', 'ES256'].includes(signingAlg)) fail('signingAlg must be RS256 or ES256');
if (!Array.isArray(cfg.clients ?? [])) fail('clients must be an array');

// client_id -> { real, substitute } for secrets oidc-provider cannot store
const substituted = new Map();
// client_id -> configured scope string (for clientCredentialsDefaultScope)
const clientScopes = new Map();
// client_id -> registered token_endpoint_auth_method
const authMethods = new Map();
const allScopes = new Set(OIDC_SCOPES);

const clients = (cfg.clients ?? []).map((c) => {
  if (!c || typeof c.client_id !== 'string') fail('every client needs a string client_id');
  const client = { ...c };
  const grants = client.grant_types ?? ['authorization_code'];
  if (!grants.includes('authorization_code')) {
    client.response_types ??= [];
    client.redirect_uris ??= [];
  }
  authMethods.set(client.client_id, client.token_endpoint_auth_method ?? 'client_secret_basic');
  if (typeof client.client_secret === 'string' && !VSCHAR.test(client.client_secret)) {
    const substitute = `nonvschar-${createHash('sha256').update(client.client_secret).digest('hex')}`;
    substituted.set(client.client_id, { real: client.client_secret, substitute });
    client.client_secret = substitute;
  }
  if (typeof client.scope === 'string') {
    clientScopes.set(client.client_id, client.scope);
    client.scope.split(' ').filter(Boolean).forEach((s) => allScopes.add(s));
  }
  return client;
});

// ---------- https and mTLS (config key "https") ----------
const tlsCfg = cfg.https;
const tls = tlsCfg && (() => {
  const file = (what, path) => {
    try {
      return readFileSync(path);
    } catch (e) {
      return fail(`https.${what}: ${e.message}`);
    }
  };
  const options = {
    cert: file('cert', tlsCfg.cert),
    key: file('key', tlsCfg.key),
    ca: file('ca', tlsCfg.ca),
    requestCert: true,
    rejectUnauthorized: false,
  };
  for (const [id, path] of Object.entries(tlsCfg.selfSignedCerts ?? {})) {
    const client = clients.find((c) => c.client_id === id) ?? fail(`https.selfSignedCerts: no client ${id}`);
    const pem = file(`selfSignedCerts.${id}`, path);
    const der = new X509Certificate(pem).raw.toString('base64');
    client.jwks = { keys: [{ ...createPublicKey(pem).export({ format: 'jwk' }), x5c: [der] }] };
  }
  const peerPem = (ctx) => {
    const peer = ctx.socket.getPeerCertificate();
    if (!peer || !peer.raw) return undefined;
    return `-----BEGIN CERTIFICATE-----\n${peer.raw.toString('base64').match(/.{1,64}/g).join('\n')}\n-----END CERTIFICATE-----\n`;
  };
  const mTLS = {
    enabled: true,
    certificateBoundAccessTokens: true,
    tlsClientAuth: true,
    selfSignedTlsClientAuth: true,
    getCertificate: peerPem,
    // Node checked the chain against `ca` (and the validity dates) during the handshake.
    certificateAuthorized: (ctx) => ctx.socket.authorized,
    certificateSubjectMatches(ctx, property, expected) {
      const pem = peerPem(ctx);
      if (!pem) return false;
      const cert = new X509Certificate(pem);
      switch (property) {
        case 'tls_client_auth_subject_dn':
          return cert.subject.split('\n').reverse().join(',') === expected
            || cert.subject.split('\n').join(',') === expected;
        case 'tls_client_auth_san_dns':
          return (cert.subjectAltName ?? '').split(', ').includes(`DNS:${expected}`);
        default:
          return false;
      }
    },
  };
  // The discovery fetch below must trust the test CA.
  const getJson = (url) => new Promise((resolve, reject) => {
    https.get(url, { ca: options.ca }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(JSON.parse(body)));
    }).on('error', reject);
  });
  const clientAuthMethods = ['client_secret_basic', 'client_secret_jwt', 'client_secret_post', 'private_key_jwt',
    'none', 'tls_client_auth', 'self_signed_tls_client_auth'];
  return {
    options, mTLS, clientAuthMethods, getJson,
  };
})();

function resourceScopeFor(client) {
  const src = client?.scope ? client.scope.split(' ') : [...allScopes];
  return src.filter((s) => s && !OIDC_SCOPES.has(s)).join(' ');
}

// ---------- keys ----------
function signingJwk() {
  const { privateKey } = signingAlg === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    ...privateKey.export({ format: 'jwk' }), kid: `test-${randomBytes(4).toString('hex')}`, alg: signingAlg, use: 'sig',
  };
}

// ---------- credential helpers (RFC 6749 §2.3.1) ----------
function formDecodeStrict(s) {
  if (!VSCHAR.test(s)) throw new Error('not form-urlencoded (raw non-ASCII)');
  return decodeURIComponent(s.replace(/\+/g, '%20'));
}
function formEncode(s) {
  return new URLSearchParams([['', s]]).toString().slice(1);
}
function parseBasic(header) {
  const m = /^basic\s+(\S+)\s*$/i.exec(header ?? '');
  if (!m) return undefined;
  const raw = Buffer.from(m[1], 'base64').toString('utf8');
  const i = raw.indexOf(':');
  if (i === -1) return undefined;
  return { rawId: raw.slice(0, i), rawSecret: raw.slice(i + 1) };
}

// ---------- server ----------
const server = tls ? https.createServer(tls.options) : http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;

// ---------- client assertions (private_key_jwt, client_secret_jwt) ----------
const assertionAlgs = cfg.clientAuthSigningAlgs;
if (assertionAlgs !== undefined
    && !(Array.isArray(assertionAlgs) && assertionAlgs.every((a) => typeof a === 'string'))) {
  fail('clientAuthSigningAlgs must be an array of JWS alg names');
}
// client_id -> the JWK Set served at /_test/jwks/<client_id>
const servedJwks = new Map();
for (const client of clients) {
  if (client.jwks_uri === 'self') {
    servedJwks.set(client.client_id, client.jwks ?? { keys: [] });
    delete client.jwks;
    client.jwks_uri = `${issuer}/_test/jwks/${encodeURIComponent(client.client_id)}`;
  }
}
// The method and decoded (unverified) parts of a request's client assertion, if any.
function assertionSeen(params) {
  const jwt = params.get('client_assertion');
  if (!jwt) return undefined;
  try {
    const [header, claims] = jwt.split('.', 2)
      .map((part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8')));
    const method = String(header.alg).startsWith('HS') ? 'client_secret_jwt' : 'private_key_jwt';
    return { method, header, claims };
  } catch {
    return { method: 'private_key_jwt', header: null, claims: null };
  }
}
function servedJwksOf(url) {
  const m = /^\/_test\/jwks\/([^/]+)$/.exec(new URL(url).pathname);
  return m && url.startsWith(issuer) ? servedJwks.get(decodeURIComponent(m[1])) : undefined;
}
// oidc-provider's fetch refuses loopback addresses (SSRF protection): a served set is
// answered here, without a request.
async function fetchServedJwks(url, options) {
  const set = servedJwksOf(String(url));
  if (!set) return globalThis.fetch(url, options);
  return new Response(JSON.stringify(set), { headers: { 'content-type': 'application/json' } });
}
// PUT /_test/jwks/<client_id>; true when the request was one.
async function jwksRoute(ctx) {
  if (ctx.method !== 'PUT' || !servedJwksOf(`${issuer}${ctx.path}`)) return false;
  const id = decodeURIComponent(ctx.path.slice('/_test/jwks/'.length));
  servedJwks.set(id, JSON.parse(await readBody(ctx.req)));
  // oidc-provider caches a jwks_uri for at least 60 s; a test rotating keys marks the
  // client's cached set stale so that the next assertion reads the new one.
  (await provider.Client.find(id)).asymmetricKeyStore.freshUntil = 0;
  ctx.status = 204;
  return true;
}

// ---------- federation (config key "federation"): RFC 8693 token exchange, RFC 7523 jwt-bearer ----------
// Subject tokens, actor tokens and JWT bearer assertions are verified as a provider with a
// workload-identity trust policy does: signed by a key of the platform's JWK Set (the file is
// read anew at every request, so a test can rotate keys), from the configured issuer, for the
// configured audience, with an `exp` not passed. Every token-endpoint request that carries a
// federated token (these, or a client_assertion) records in its /_test/requests entry what
// each token was (decoded, not trusted), and, for the two grants, the outcome.
const {
  jwtVerify, createLocalJWKSet, decodeJwt, decodeProtectedHeader, calculateJwkThumbprint,
} = await import('jose');

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TYPE_JWT = 'urn:ietf:params:oauth:token-type:jwt';
const TYPE_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
const FEDERATED_PARAMS = ['subject_token', 'actor_token', 'assertion', 'client_assertion'];

function federationFrom(fed) {
  if (fed === undefined) return undefined;
  for (const key of ['jwksFile', 'issuer', 'audience']) {
    if (typeof fed?.[key] !== 'string' || !fed[key]) fail(`federation.${key} must be a non-empty string`);
  }
  const ignoreRequestedTokenType = Boolean(fed.ignoreRequestedTokenType);
  // issued token -> the claims it carries about the tokens it was issued for
  const claimsOf = new WeakMap();
  // request -> its /_test/requests entry
  const entryOf = new WeakMap();

  // What a token says of itself, unverified, and its SHA-256 (tokend's fingerprint is the
  // first 8 hex digits).
  function describe(token) {
    const seen = { sha256: createHash('sha256').update(token).digest('hex') };
    try {
      const claims = decodeJwt(token);
      for (const claim of ['iss', 'sub', 'aud', 'exp', 'iat', 'jti']) {
        if (claims[claim] !== undefined) seen[claim] = claims[claim];
      }
    } catch {
      seen.not_a_jwt = true;
    }
    return seen;
  }

  async function verify(token) {
    const jwks = createLocalJWKSet(JSON.parse(readFileSync(fed.jwksFile, 'utf8')));
    const { payload } = await jwtVerify(token, jwks, {
      issuer: fed.issuer, audience: fed.audience, requiredClaims: ['exp'],
    });
    return payload;
  }

  // Verifies the federated token `name` of the request, recording why it was refused.
  async function accepted(ctx, name, makeError) {
    const { federation } = entryOf.get(ctx.req);
    const token = ctx.oidc.params[name];
    if (!token) {
      federation.reason = `missing ${name}`;
      throw makeError(`missing required parameter '${name}'`);
    }
    try {
      const claims = await verify(token);
      federation[name].verified = true;
      return claims;
    } catch (e) {
      federation[name].verified = false;
      federation.reason = `${name}: ${e.code ?? 'ERR'}: ${e.message}`;
      throw makeError(`${name} was not accepted: ${e.message}`);
    }
  }

  // An access token of this provider for the authenticated client, as client_credentials
  // builds one, carrying `claims` (what it was exchanged for).
  async function issue(ctx, claims) {
    const { client, params } = ctx.oidc;
    const entry = entryOf.get(ctx.req);
    const resources = [params.resource ?? resourceIndicator].flat();
    if (resources.length !== 1 || resources[0] !== resourceIndicator) {
      entry.federation.reason = `resource ${JSON.stringify(params.resource)}`;
      throw new errors.InvalidTarget();
    }
    const audiences = params.audience === undefined ? [] : [params.audience].flat();
    const allowed = new Set(resourceScopeFor(client).split(' '));
    const asked = (params.scope ?? '').split(' ').filter(Boolean);
    const outside = asked.filter((s) => !allowed.has(s));
    if (outside.length) {
      entry.federation.reason = `scope ${outside.join(' ')}`;
      throw new errors.InvalidScope('requested scope is not allowed', outside.join(' '));
    }
    const token = new ctx.oidc.provider.ClientCredentials({ client, scope: asked.join(' ') || undefined });
    token.resourceServer = new ctx.oidc.provider.ResourceServer(resourceIndicator, {
      scope: resourceScopeFor(client),
      audience: audiences.length === 1 ? audiences[0] : resourceIndicator,
      accessTokenTTL: accessTokenTtl,
      accessTokenFormat: 'jwt',
      jwt: { sign: { alg: signingAlg } },
    });
    claimsOf.set(token, claims);
    const value = await token.save();
    entry.federation.outcome = 'issued';
    return { value, token };
  }

  async function tokenExchange(ctx) {
    const { params } = ctx.oidc;
    const { federation } = entryOf.get(ctx.req);
    const invalidRequest = (d) => new errors.InvalidRequest(d);
    federation.outcome = 'rejected';
    federation.subject_token_type = params.subject_token_type ?? null;
    federation.requested_token_type = params.requested_token_type ?? null;
    for (const key of ['scope', 'audience', 'resource']) federation[key] = params[key] ?? null;
    for (const role of ['subject', 'actor']) {
      const type = params[`${role}_token_type`];
      if (params[`${role}_token`] !== undefined && type !== TYPE_JWT) {
        federation.reason = `${role}_token_type ${JSON.stringify(type)}`;
        throw invalidRequest(`${role}_token_type must be ${TYPE_JWT}`);
      }
    }
    const subject = await accepted(ctx, 'subject_token', invalidRequest);
    const actor = params.actor_token === undefined ? undefined
      : await accepted(ctx, 'actor_token', invalidRequest);
    const requested = params.requested_token_type ?? TYPE_ACCESS_TOKEN;
    if (!ignoreRequestedTokenType && ![TYPE_ACCESS_TOKEN, TYPE_JWT].includes(requested)) {
      federation.reason = `requested_token_type ${requested}`;
      throw invalidRequest(`requested_token_type ${requested} is not supported: ask for ${TYPE_ACCESS_TOKEN} or ${TYPE_JWT}`);
    }
    const issued = ignoreRequestedTokenType ? TYPE_ACCESS_TOKEN : requested;
    const { value, token } = await issue(ctx, {
      subject: { iss: subject.iss, sub: subject.sub, jti: subject.jti },
      ...(actor && { act: { iss: actor.iss, sub: actor.sub } }),
    });
    federation.issued_token_type = issued;
    ctx.body = {
      access_token: value,
      issued_token_type: issued,
      // RFC 8693 2.2.1: "N_A" when the issued token is not an access token.
      token_type: issued === TYPE_ACCESS_TOKEN ? token.tokenType : 'N_A',
      expires_in: token.expiration,
      ...(token.scope && { scope: token.scope }),
    };
  }

  async function jwtBearer(ctx) {
    const { federation } = entryOf.get(ctx.req);
    federation.outcome = 'rejected';
    federation.scope = ctx.oidc.params.scope ?? null;
    const assertion = await accepted(ctx, 'assertion', (d) => new errors.CustomOIDCProviderError('invalid_grant', d));
    const { value, token } = await issue(ctx, { subject: { iss: assertion.iss, sub: assertion.sub, jti: assertion.jti } });
    ctx.body = {
      access_token: value,
      token_type: token.tokenType,
      expires_in: token.expiration,
      ...(token.scope && { scope: token.scope }),
    };
  }

  return {
    register(provider) {
      const multi = ['audience', 'resource'];
      provider.registerGrantType(TOKEN_EXCHANGE, tokenExchange, [
        'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
        'requested_token_type', 'scope', ...multi,
      ], multi);
      provider.registerGrantType(JWT_BEARER, jwtBearer, ['assertion', 'scope', 'resource']);
    },
    extraTokenClaims: async (_ctx, token) => claimsOf.get(token),
    // Called for every token-endpoint request before oidc-provider sees it.
    seen(entry, params, req) {
      const present = FEDERATED_PARAMS.filter((p) => params.get(p));
      if (!present.length && ![TOKEN_EXCHANGE, JWT_BEARER].includes(params.get('grant_type'))) return;
      entry.federation = {};
      for (const name of present) entry.federation[name] = describe(params.get(name));
      entryOf.set(req, entry);
    },
    // Called once oidc-provider answered: the error of a refusal it made itself.
    settle(entry, body) {
      if (entry.federation && entry.status !== 200 && body?.error) {
        entry.federation.outcome = 'rejected';
        entry.federation.error = body.error;
        entry.federation.error_description = body.error_description;
      }
    },
  };
}
const federation = federationFrom(cfg.federation);
// ---------- end of federation ----------

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingJwk()] },
  clientDefaults: {
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: signingAlg,
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: [...allScopes],
  claims: { openid: ['sub'] },
  ttl: {
    RefreshToken: refreshTokenTtl,
    AccessToken: accessTokenTtl,
    ClientCredentials: accessTokenTtl,
    DeviceCode: deviceCodeTtl,
  },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: deviceFlow },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    // On by default in oidc-provider 9; spelled out because nonces need their secret
    // (a nonce is an HMAC of the current minute). requireNonce is asked for every DPoP
    // proof the provider checks: only the token endpoint's are meant here.
    dPoP: {
      enabled: true,
      ...(dpopNonce && { nonceSecret: randomBytes(32), requireNonce: (ctx) => ctx.oidc?.route === 'token' }),
    },
    ...(tls ? { mTLS: tls.mTLS } : {}),
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? resourceIndicator,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator, client) => {
        if (indicator !== resourceIndicator) throw new errors.InvalidTarget();
        return {
          scope: resourceScopeFor(client),
          audience: resourceIndicator,
          accessTokenTTL: accessTokenTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: signingAlg } },
        };
      },
    },
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => refreshTokenRotation,
  pkce: { required: () => false },
  ...(tls ? { clientAuthMethods: tls.clientAuthMethods } : {}),
  ...(assertionAlgs && { enabledJWA: { clientAuthSigningAlgValues: assertionAlgs } }),
  fetch: fetchServedJwks,
  ...(federation && { extraTokenClaims: federation.extraTokenClaims }),
});
federation?.register(provider);

// static clients are only validated when first used: fail at startup instead
for (const { client_id: id } of clients) {
  try {
    await provider.Client.find(id);
  } catch (e) {
    fail(`client ${id}: ${e.message}${e.error_description ? `: ${e.error_description}` : ''}`);
  }
}

provider.on('server_error', (ctx, err) => console.error('server_error', ctx.path, err));

let tokenPath = '/token';
let clientAuthPaths = new Set([tokenPath]);
const requests = [];

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

// What a request's DPoP proof says of itself, unverified (oidc-provider verifies it).
async function dpopSeen(proof) {
  if (!proof) return null;
  try {
    const header = decodeProtectedHeader(proof);
    const claims = decodeJwt(proof);
    return {
      jkt: await calculateJwkThumbprint(header.jwk),
      nonce: claims.nonce ?? null,
      htu: claims.htu,
      htm: claims.htm,
      iat: claims.iat,
    };
  } catch {
    return { undecodable: true };
  }
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/_test/requests' && ctx.method === 'GET') {
    ctx.body = requests;
    return;
  }
  if (ctx.path === '/_test/reset' && ctx.method === 'POST') {
    requests.length = 0;
    ctx.status = 204;
    return;
  }
  if (await jwksRoute(ctx)) return;
  if (ctx.method !== 'POST') return next();

  const isToken = ctx.path === tokenPath;
  const entry = isToken ? {
    client_id: null, grant_type: null, at_ms: Date.now(), status: null, auth_method: 'none',
    dpop: await dpopSeen(ctx.get('dpop')),
  } : undefined;
  let usedMethod = 'none';
  let authClientId = null;

  // Basic credentials
  const basic = parseBasic(ctx.get('authorization'));
  if (basic) {
    let id; let secret;
    try {
      id = formDecodeStrict(basic.rawId);
      secret = formDecodeStrict(basic.rawSecret);
    } catch { /* leave as is: oidc-provider rejects it */ }
    usedMethod = 'client_secret_basic';
    authClientId = id ?? basic.rawId;
    const sub = id !== undefined && substituted.get(id);
    if (sub && secret !== undefined) {
      const s = secret === sub.real ? sub.substitute : 'wrong-secret';
      ctx.req.headers.authorization = `Basic ${Buffer.from(`${basic.rawId}:${s}`).toString('base64')}`;
    }
  }

  // form body (token endpoint, or any client_secret_post of a substituted client)
  const isClientAuth = clientAuthPaths.has(ctx.path);
  if (ctx.is('application/x-www-form-urlencoded') && (isClientAuth || substituted.size)) {
    const raw = await readBody(ctx.req);
    const params = new URLSearchParams(raw);
    let out = raw;
    authClientId ??= params.get('client_id');
    if (params.has('client_secret') && usedMethod === 'none') usedMethod = 'client_secret_post';
    const assertion = assertionSeen(params);
    if (assertion && usedMethod === 'none') {
      usedMethod = assertion.method;
      if (entry) entry.assertion = { header: assertion.header, claims: assertion.claims };
    }
    if (entry) entry.grant_type = params.get('grant_type');
    if (entry) federation?.seen(entry, params, ctx.req);
    if (isToken && params.get('grant_type') === 'refresh_token') {
      entry.presented_refresh_token = params.get('refresh_token');
    }
    const sub = substituted.get(params.get('client_id'));
    if (sub && params.has('client_secret')) {
      params.set('client_secret', params.get('client_secret') === sub.real ? sub.substitute : 'wrong-secret');
      out = params.toString();
    }
    if (clientCredentialsDefaultScope && isToken && params.get('grant_type') === 'client_credentials'
        && !params.has('scope')) {
      const scope = clientScopes.has(authClientId)
        && resourceScopeFor({ scope: clientScopes.get(authClientId) });
      if (scope) {
        params.set('scope', scope);
        out = params.toString();
      }
    }
    // oidc-provider falls back to req.body when the stream was consumed
    ctx.req.body = out;
  }

  if (entry) {
    entry.client_id = authClientId;
    entry.auth_method = usedMethod;
    requests.push(entry);
  }

  const registered = authMethods.get(authClientId);
  if (enforceAuthMethod && isClientAuth && usedMethod !== 'none'
      && ['client_secret_basic', 'client_secret_post'].includes(registered) && registered !== usedMethod) {
    ctx.status = 401;
    if (usedMethod === 'client_secret_basic') ctx.set('WWW-Authenticate', `Basic realm="${issuer}"`);
    ctx.set('Cache-Control', 'no-store');
    ctx.body = {
      error: 'invalid_client',
      error_description: `the provided authentication mechanism (${usedMethod}) does not match the registered client authentication method (${registered})`,
    };
    if (entry) entry.status = 401;
    return undefined;
  }

  if (!entry) return next();
  if (tokenDelayMs > 0) await new Promise((resolve) => { setTimeout(resolve, tokenDelayMs); });
  // The grace period applies when the request is processed, as a provider would check it.
  if (entry.presented_refresh_token) {
    let rt = entry.presented_refresh_token;
    while (successors.has(rt) && Date.now() - successors.get(rt).at <= reuseGraceMs) {
      rt = successors.get(rt).next;
      entry.reused_within_grace = true;
    }
    if (rt !== entry.presented_refresh_token) {
      const params = new URLSearchParams(ctx.req.body);
      params.set('refresh_token', rt);
      ctx.req.body = params.toString();
      entry.presented_refresh_token = rt;
    }
  }
  try {
    await next();
    entry.status = ctx.status;
    federation?.settle(entry, ctx.body);
    const rotated = ctx.status === 200 && ctx.body && ctx.body.refresh_token;
    if (rotated && entry.presented_refresh_token && rotated !== entry.presented_refresh_token) {
      successors.set(entry.presented_refresh_token, { next: rotated, at: Date.now() });
    }
    delete entry.presented_refresh_token;
  } catch (err) {
    entry.status = err.status || err.statusCode || 500;
    federation?.settle(entry, err);
    throw err;
  }
  return undefined;
});

server.on('request', provider.callback());

// discover the real token endpoint
const discoUrl = `${issuer}/.well-known/openid-configuration`;
const disco = tls ? await tls.getJson(discoUrl) : await (await fetch(discoUrl)).json();
tokenPath = new URL(disco.token_endpoint).pathname;
clientAuthPaths = new Set([disco.token_endpoint, disco.introspection_endpoint, disco.revocation_endpoint]
  .filter(Boolean).map((u) => new URL(u).pathname));

process.stdout.write(`READY ${JSON.stringify({ issuer, token_endpoint: disco.token_endpoint, port })}\n`);
console.error(`oidc test server: listening on ${issuer}, clients: ${clients.map((c) => c.client_id).join(', ') || '(none)'}`);

// ---------- lifetime ----------
function shutdown(why) {
  console.error(`oidc test server: exiting (${why})`);
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
