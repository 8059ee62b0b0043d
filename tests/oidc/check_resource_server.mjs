// Self-check of the DPoP side of the test servers: server.mjs's token endpoint
// (config key dpopNonce) and resource_server.mjs's token and proof checks, run end
// to end over loopback HTTP. Prints one "ok - ..." or "not ok - ..." line per check
// and exits 1 if any check failed (2 if a server did not start), 0 otherwise.
//
//   node tests/oidc/check_resource_server.mjs        (needs npm ci --prefix tests/oidc)
//
// It starts, as children with a piped stdin (they exit when this script does):
//   oidc A  server.mjs, dpopNonce on: the tokens for most checks
//   oidc B  server.mjs, dpopNonce off, 2 s tokens: a token that expires, a foreign issuer
//   rs A    resource_server.mjs for oidc A
//   rs N    resource_server.mjs for oidc A with REQUIRE_NONCE=1
//   rs B    resource_server.mjs for oidc B
// DPoP proofs are built here with jose, as a client would (RFC 9449 §4.2).

import { spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import http from 'node:http';
import { fileURLToPath } from 'node:url';

import {
  SignJWT, calculateJwkThumbprint, decodeJwt, exportJWK, generateKeyPair,
} from 'jose';

const here = (name) => fileURLToPath(new URL(name, import.meta.url));
const children = [];
let failures = 0;

// A whole run takes a few seconds; a hang is a failure, not a stuck test.
setTimeout(() => {
  console.log('not ok - timed out after 60 s');
  process.exit(1);
}, 60_000).unref();

function check(what, cond, detail) {
  if (cond) {
    console.log(`ok - ${what}`);
  } else {
    failures += 1;
    const text = detail === undefined ? '' : `: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`;
    console.log(`not ok - ${what}${text.length > 400 ? `${text.slice(0, 400)}...` : text}`);
  }
}

// Starts a server script, resolves with its READY object.
function start(script, env) {
  const child = spawn(process.execPath, [here(script)], {
    env: { ...process.env, OIDC_TEST_KEEP_STDIN_OPEN: '', ...env },
    stdio: ['pipe', 'pipe', process.env.CHECK_VERBOSE === '1' ? 'inherit' : 'ignore'],
  });
  children.push(child);
  return new Promise((resolve) => {
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('READY '));
      if (line) resolve(JSON.parse(line.slice(6)));
    });
    child.on('exit', (code) => {
      console.log(`not ok - ${script} exited (${code}) before READY (CHECK_VERBOSE=1 shows its log)`);
      process.exit(2);
    });
  });
}

// One HTTP request on a fresh connection; header values may be arrays (sent as
// repeated header lines, which fetch cannot do).
function call(method, url, headers = {}, body = undefined) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const req = http.request(url, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try {
          json = JSON.parse(text);
        } catch { /* not JSON */ }
        resolve({
          status: res.statusCode, headers: res.headers, text, json, ms: Date.now() - started,
        });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

// ---------- DPoP proofs ----------
const now = () => Math.floor(Date.now() / 1000);
const key = await generateKeyPair('ES256');
const jwk = await exportJWK(key.publicKey);
const jkt = await calculateJwkThumbprint(jwk);
const otherKey = await generateKeyPair('ES256');

// A proof for `htm` `htu`; `token` adds ath; `over` overrides claims; `opts` the key,
// jwk, typ and alg.
async function proof(htm, htu, { token, nonce, over = {} } = {}, opts = {}) {
  const k = opts.key ?? key;
  const claims = {
    htm, htu, jti: randomUUID(), iat: now(),
    ...(token && { ath: createHash('sha256').update(token).digest('base64url') }),
    ...(nonce && { nonce }),
    ...over,
  };
  return new SignJWT(claims)
    .setProtectedHeader({ alg: opts.alg ?? 'ES256', typ: opts.typ ?? 'dpop+jwt', jwk: opts.jwk ?? await exportJWK(k.publicKey) })
    .sign(k.privateKey);
}

// ---------- the servers ----------
const clients = [{
  client_id: 'api', client_secret: 's', grant_types: ['client_credentials'], scope: 'api:read',
}];
const [oidcA, oidcB] = await Promise.all([
  start('server.mjs', { OIDC_TEST_CONFIG: JSON.stringify({ clients, dpopNonce: true }) }),
  start('server.mjs', { OIDC_TEST_CONFIG: JSON.stringify({ clients, accessTokenTtl: 2 }) }),
]);
const [rsA, rsN, rsB] = await Promise.all([
  start('resource_server.mjs', { ISSUER: oidcA.issuer }),
  start('resource_server.mjs', { ISSUER: oidcA.issuer, REQUIRE_NONCE: '1' }),
  start('resource_server.mjs', { ISSUER: oidcB.issuer }),
]);

// client_credentials; the resource indicator (server.mjs's default resource) makes the
// access token a JWT with aud urn:tokend:test-api.
function tokenRequest(oidc, dpop) {
  return call('POST', oidc.token_endpoint, {
    Authorization: `Basic ${Buffer.from('api:s').toString('base64')}`,
    'Content-Type': 'application/x-www-form-urlencoded',
    ...(dpop && { DPoP: dpop }),
  }, 'grant_type=client_credentials&scope=api%3Aread');
}

// ---------- token endpoint: dpopNonce on (oidc A) ----------
const noNonce = await tokenRequest(oidcA, await proof('POST', oidcA.token_endpoint));
check('dpopNonce: a proof without nonce gets 400 use_dpop_nonce', noNonce.status === 400 && noNonce.json?.error === 'use_dpop_nonce', noNonce.text);
const asNonce = noNonce.headers['dpop-nonce'];
check('dpopNonce: the 400 carries a DPoP-Nonce header', Boolean(asNonce), noNonce.headers);
const dpopReply = await tokenRequest(oidcA, await proof('POST', oidcA.token_endpoint, { nonce: asNonce }));
check('dpopNonce: with the nonce, a DPoP token', dpopReply.status === 200 && dpopReply.json?.token_type === 'DPoP', dpopReply.text);
const T = dpopReply.json?.access_token;
const tClaims = T ? decodeJwt(T) : {};
check('the DPoP token is a JWT with cnf.jkt = the proof key\'s thumbprint', tClaims.cnf?.jkt === jkt, tClaims);
const bearerReply = await tokenRequest(oidcA);
check('no DPoP header: a Bearer token', bearerReply.json?.token_type === 'Bearer', bearerReply.text);
const B = bearerReply.json?.access_token;
check('the Bearer token has no cnf', B && decodeJwt(B).cnf === undefined);
const asSeen = (await call('GET', `${oidcA.issuer}/_test/requests`)).json ?? [];
check('/_test/requests records each proof, decoded',
  asSeen.length === 3 && asSeen[0].dpop?.jkt === jkt && asSeen[0].dpop.nonce === null
  && asSeen[1].dpop?.nonce === asNonce && asSeen[1].dpop.htm === 'POST'
  && asSeen[1].dpop.htu === oidcA.token_endpoint && typeof asSeen[1].dpop.iat === 'number'
  && asSeen[2].dpop === null, asSeen);

// ---------- token endpoint: dpopNonce off (oidc B) ----------
const plain = await tokenRequest(oidcB, await proof('POST', oidcB.token_endpoint));
check('no dpopNonce: a proof without nonce gets a DPoP token', plain.status === 200 && plain.json?.token_type === 'DPoP'
  && decodeJwt(plain.json.access_token).cnf?.jkt === jkt, plain.text);
// Tokens of oidc B live 1-2 s (exp = iat + 2, iat in whole seconds): fetched just before use.
const shortBearer = async () => (await tokenRequest(oidcB)).json?.access_token;

// ---------- resource server A ----------
const api = (rs, method, path, auth, dpop, body) => call(method, `${rs.url}${path}`, {
  ...(auth && { Authorization: auth }),
  ...(dpop !== undefined && { DPoP: dpop }),
}, body);
const www = (r) => r.headers['www-authenticate'];
// `check` of a 401 with exactly this challenge
function refused(what, r, challenge) {
  check(what, r.status === 401 && www(r) === challenge, { status: r.status, www: www(r), body: r.text });
}
const htuA = (path) => `${rsA.url}${path}`;
const goodProof = (path, method = 'GET', extra = {}) => proof(method, htuA(path), { token: T, ...extra });

refused('no Authorization: bare Bearer challenge', await api(rsA, 'GET', '/x'), 'Bearer');
refused('Basic Authorization: bare Bearer challenge', await api(rsA, 'GET', '/x', 'Basic YTpi'), 'Bearer');

let r = await api(rsA, 'GET', '/hello?x=1&y', `Bearer ${B}`);
check('Bearer token: 200 echo', r.status === 200 && r.json?.path === '/hello' && r.json.query === 'x=1&y'
  && r.json.method === 'GET' && r.json.token?.client_id === 'api' && r.json.token.scope === 'api:read'
  && r.json.token.jkt === null && r.json.dpop === null && r.json.headers?.authorization === `Bearer ${B}`, r.text);
r = await api(rsA, 'GET', '/x', `bEaReR ${B}`);
check('scheme is case-insensitive', r.status === 200, r.text);

const big = Buffer.alloc(100_000, 'x');
r = await api(rsA, 'POST', '/upload', `Bearer ${B}`, undefined, big);
check('POST body hashed and counted', r.status === 200 && r.json?.body_length === big.length
  && r.json.body_sha256 === createHash('sha256').update(big).digest('hex'), r.text);

refused('not a JWT: invalid_token', await api(rsA, 'GET', '/x', 'Bearer nope'), 'Bearer error="invalid_token"');
const forged = await new SignJWT({ ...decodeJwt(B) }).setProtectedHeader({ alg: 'ES256', typ: 'at+jwt' }).sign(otherKey.privateKey);
refused('token signed by another key: invalid_token', await api(rsA, 'GET', '/x', `Bearer ${forged}`), 'Bearer error="invalid_token"');
refused('token of another issuer: invalid_token', await api(rsA, 'GET', '/x', `Bearer ${await shortBearer()}`), 'Bearer error="invalid_token"');
refused('DPoP scheme with an unbound token: invalid_token', await api(rsA, 'GET', '/x', `DPoP ${B}`, await goodProof('/x')), 'Bearer error="invalid_token"');

const dpopRefusal = (check_) => `DPoP error="invalid_dpop_proof", error_description="${check_}"`;
refused('bound token as Bearer: scheme', await api(rsA, 'GET', '/x', `Bearer ${T}`, await goodProof('/x')), dpopRefusal('scheme'));
refused('bound token without proof: header', await api(rsA, 'GET', '/x', `DPoP ${T}`), dpopRefusal('header'));
refused('two DPoP headers: header', await api(rsA, 'GET', '/x', `DPoP ${T}`, [await goodProof('/x'), await goodProof('/x')]), dpopRefusal('header'));

const used = await goodProof('/data');
r = await api(rsA, 'GET', '/data?q=1', `DPoP ${T}`, used);
check('DPoP token with a good proof (htu without the query): 200', r.status === 200 && r.json?.token?.jkt === jkt
  && r.json.token.jti === tClaims.jti && r.json.dpop?.nonce === null && r.json.query === 'q=1', r.text);
r = await api(rsA, 'POST', '/data', `dpop ${T}`, await goodProof('/data', 'POST'), '{"a":1}');
check('DPoP POST: 200', r.status === 200 && r.json?.body_length === 7, r.text);

refused('replayed proof: jti', await api(rsA, 'GET', '/data', `DPoP ${T}`, used), dpopRefusal('jti'));
refused('wrong htm: htm', await api(rsA, 'GET', '/x', `DPoP ${T}`, await goodProof('/x', 'POST')), dpopRefusal('htm'));
refused('wrong path in htu: htu', await api(rsA, 'GET', '/x', `DPoP ${T}`, await goodProof('/y')), dpopRefusal('htu'));
refused('query in htu: htu', await api(rsA, 'GET', '/x?a=1', `DPoP ${T}`, await goodProof('/x?a=1')), dpopRefusal('htu'));
refused('wrong port in htu: htu', await api(rsA, 'GET', '/x', `DPoP ${T}`, await proof('GET', `http://127.0.0.1:1/x`, { token: T })), dpopRefusal('htu'));
refused('iat 2 minutes old: iat', await api(rsA, 'GET', '/x', `DPoP ${T}`, await goodProof('/x', 'GET', { over: { iat: now() - 120 } })), dpopRefusal('iat'));
refused('iat 2 minutes ahead: iat', await api(rsA, 'GET', '/x', `DPoP ${T}`, await goodProof('/x', 'GET', { over: { iat: now() + 120 } })), dpopRefusal('iat'));
refused('ath of another token: ath', await api(rsA, 'GET', '/x', `DPoP ${T}`, await proof('GET', htuA('/x'), { token: B })), dpopRefusal('ath'));
refused('no ath: ath', await api(rsA, 'GET', '/x', `DPoP ${T}`, await proof('GET', htuA('/x'))), dpopRefusal('ath'));
refused('proof by another key: jkt', await api(rsA, 'GET', '/x', `DPoP ${T}`, await proof('GET', htuA('/x'), { token: T }, { key: otherKey })), dpopRefusal('jkt'));
refused('typ jwt: proof', await api(rsA, 'GET', '/x', `DPoP ${T}`, await proof('GET', htuA('/x'), { token: T }, { typ: 'jwt' })), dpopRefusal('proof'));
refused('jwk not the signing key: proof', await api(rsA, 'GET', '/x', `DPoP ${T}`, await proof('GET', htuA('/x'), { token: T }, { jwk: await exportJWK(otherKey.publicKey) })), dpopRefusal('proof'));
refused('no jti: proof', await api(rsA, 'GET', '/x', `DPoP ${T}`, await goodProof('/x', 'GET', { over: { jti: undefined } })), dpopRefusal('proof'));

// special paths
r = await api(rsA, 'GET', '/redirect', `Bearer ${B}`);
check('/redirect: 302 to /elsewhere, empty body', r.status === 302 && r.headers.location === '/elsewhere' && r.text === '', r);
r = await api(rsA, 'GET', '/stream?chunks=3&delay_ms=150', `Bearer ${B}`);
check('/stream: 3 chunks, chunked, spaced out', r.status === 200 && r.text === 'chunk 0\nchunk 1\nchunk 2\n'
  && r.headers['transfer-encoding'] === 'chunked' && r.ms >= 280, { text: r.text, headers: r.headers, ms: r.ms });
r = await api(rsA, 'GET', '/status/418', `Bearer ${B}`);
check('/status/418', r.status === 418 && r.json?.status === 418, r.text);
r = await api(rsA, 'GET', '/status/204', `DPoP ${T}`, await goodProof('/status/204'));
check('/status/204 (DPoP)', r.status === 204 && r.text === '', r.text);
r = await api(rsA, 'GET', '/bare401', `Bearer ${B}`);
check('/bare401: 401 without WWW-Authenticate', r.status === 401 && www(r) === undefined, r.headers);
r = await api(rsA, 'GET', '/status/200', `Bearer nope`);
check('special paths need a valid token too', r.status === 401, r.status);
r = await api(rsA, 'GET', '/headers-out', `Bearer ${B}`);
check('/headers-out: hop-by-hop and end-to-end headers', r.status === 200 && r.headers.connection === 'x-hop'
  && r.headers['x-hop'] === '1' && r.headers['keep-alive'] === 'timeout=5' && r.headers['x-end-to-end'] === '1', r.headers);

// superseded tokens
r = await api(rsA, 'GET', '/x', `DPoP ${T}`, await goodProof('/x'));
const sup = await call('POST', `${rsA.url}/_test/supersede`);
check('/_test/supersede names the last accepted token', sup.status === 200 && sup.json?.superseded === tClaims.jti, sup.text);
refused('superseded DPoP token', await api(rsA, 'GET', '/x', `DPoP ${T}`, await goodProof('/x')), 'DPoP error="invalid_token", error_description="superseded"');
r = await api(rsA, 'GET', '/x', `Bearer ${B}`);
await call('POST', `${rsA.url}/_test/supersede`);
refused('superseded Bearer token', await api(rsA, 'GET', '/x', `Bearer ${B}`), 'Bearer error="invalid_token", error_description="superseded"');

// the request log
const log = (await call('GET', `${rsA.url}/_test/requests`)).json ?? [];
const replay = log.find((e) => e.reason?.includes('replayed'));
check('/_test/requests: every request, none of /_test/*', log.length > 30 && log.every((e) => !e.path.startsWith('/_test/')), log.length);
check('/_test/requests: a refused proof', replay && replay.status === 401 && replay.error === 'invalid_dpop_proof'
  && replay.scheme === 'DPoP' && replay.dpop === true && replay.has_nonce === false && replay.token_jti === tClaims.jti, replay);
check('/_test/requests: an accepted Bearer request', log[2]?.status === 200 && log[2].error === null
  && log[2].scheme === 'Bearer' && log[2].dpop === false && log[2].path === '/hello', log[2]);
r = await call('POST', `${rsA.url}/_test/reset`);
check('/_test/reset: 204, empty log', r.status === 204 && (await call('GET', `${rsA.url}/_test/requests`)).json?.length === 0);

// ---------- resource server N: REQUIRE_NONCE=1 ----------
const htuN = `${rsN.url}/n`;
r = await call('POST', `${rsN.url}/_test/supersede`);
check('/_test/supersede before any accepted token: 404', r.status === 404, r.status);
r = await api(rsN, 'GET', '/n', `DPoP ${T}`, await proof('GET', htuN, { token: T }));
const n1 = r.headers['dpop-nonce'];
refused('REQUIRE_NONCE: no nonce: use_dpop_nonce', r, 'DPoP error="use_dpop_nonce"');
check('REQUIRE_NONCE: the 401 carries DPoP-Nonce', Boolean(n1), r.headers);
r = await api(rsN, 'GET', '/n', `DPoP ${T}`, await proof('GET', htuN, { token: T, nonce: n1 }));
check('REQUIRE_NONCE: with the nonce: 200', r.status === 200 && r.json?.dpop?.nonce === n1, r.text);
r = await call('POST', `${rsN.url}/_test/rotate_nonce`);
const n2 = r.json?.nonce;
check('/_test/rotate_nonce: a new nonce', r.status === 200 && n2 && n2 !== n1, r.text);
r = await api(rsN, 'GET', '/n', `DPoP ${T}`, await proof('GET', htuN, { token: T, nonce: n1 }));
refused('REQUIRE_NONCE: the old nonce: use_dpop_nonce', r, 'DPoP error="use_dpop_nonce"');
check('REQUIRE_NONCE: ... with the new nonce in DPoP-Nonce', r.headers['dpop-nonce'] === n2, r.headers);
r = await api(rsN, 'GET', '/n', `DPoP ${T}`, await proof('GET', htuN, { token: T, nonce: n2 }));
check('REQUIRE_NONCE: the new nonce: 200', r.status === 200, r.text);
r = await api(rsN, 'GET', '/n', `Bearer ${B}`);
check('REQUIRE_NONCE: Bearer tokens need no nonce', r.status === 200, r.text);
const logN = (await call('GET', `${rsN.url}/_test/requests`)).json ?? [];
check('/_test/requests: has_nonce', logN.map((e) => e.has_nonce).join() === 'false,true,true,true,false'
  && logN[0].error === 'use_dpop_nonce', logN);

// ---------- resource server B: expiry ----------
const expiring = await shortBearer();
r = await api(rsB, 'GET', '/x', `Bearer ${expiring}`);
check('oidc B token on rs B: 200', r.status === 200, r.text);
const { exp } = decodeJwt(expiring);
await new Promise((resolve) => { setTimeout(resolve, Math.max(0, exp * 1000 - Date.now()) + 50); });
refused('expired token: invalid_token', await api(rsB, 'GET', '/x', `Bearer ${expiring}`), 'Bearer error="invalid_token"');

// ---------- done ----------
for (const child of children) {
  child.removeAllListeners('exit');
  child.stdin.end();
}
console.log(failures ? `FAILED: ${failures} check(s)` : 'all checks passed');
process.exit(failures ? 1 : 0);
