// Node's built-in fetch (undici, Node 20+) calling tokend's credential-injecting
// proxy: no npm package needed.
//
//   node tests/node/proxy_fetch.mjs URL PATH
//
// Makes a GET, then a POST with a JSON body ({"hello": "proxy", "n": 42}, as
// application/json), to URL + PATH, without any Authorization header (injecting
// the token is the proxy's job), and prints one JSON line per call:
//   {"lib": "fetch", "method": "GET"|"POST", "status": int,
//    "body": the reply parsed as JSON, or its text if it is not JSON}
// Redirects are not followed (a 3xx is reported as such). A call that fails outright
// prints {"lib", "method", "status": null, "error": "<message>"} instead, and the
// script exits 1 after the other call.

const [url, path] = process.argv.slice(2);
if (!url || path === undefined) {
  console.error('usage: proxy_fetch.mjs URL PATH');
  process.exit(2);
}
const target = url.replace(/\/$/, '') + path;
const TIMEOUT_MS = 30_000;

async function call(method, init = {}) {
  try {
    const res = await fetch(target, {
      method, redirect: 'manual', signal: AbortSignal.timeout(TIMEOUT_MS), ...init,
    });
    const text = await res.text();
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    console.log(JSON.stringify({ lib: 'fetch', method, status: res.status, body }));
    return true;
  } catch (e) {
    // undici hides the socket error (ECONNREFUSED...) in `cause`
    const error = e.cause ? `${e.message}: ${e.cause.code ?? e.cause.message}` : e.message;
    console.log(JSON.stringify({ lib: 'fetch', method, status: null, error }));
    return false;
  }
}

const ok = [
  await call('GET'),
  await call('POST', {
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ hello: 'proxy', n: 42 }),
  }),
].every(Boolean);
process.exit(ok ? 0 : 1);
