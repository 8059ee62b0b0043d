// Mints one JWT, as a platform's token service would, and prints it on stdout: a command
// source for tokend's tests (`subject_token_command`, `client_assertion_command`, ...).
//
//   node mint.mjs --key KEY.pem --iss ISS --sub SUB --aud AUD
//                 [--lifetime=SECONDS (300; negative, as --lifetime=-60: already expired)] [--kid KID]
//                 [--log FILE (appends the minted token's jti, one line per run)]
//
// KEY.pem: a PKCS#8 private key, EC P-256 (signs ES256) or RSA (RS256). Every run mints a new
// `jti`, so an assertion is never replayed (oidc-provider refuses a reused one).

import { createPrivateKey, randomUUID, sign } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values: a } = parseArgs({
  options: {
    key: { type: 'string' },
    iss: { type: 'string' },
    sub: { type: 'string' },
    aud: { type: 'string' },
    lifetime: { type: 'string', default: '300' },
    kid: { type: 'string' },
    log: { type: 'string' },
  },
});
for (const required of ['key', 'iss', 'sub', 'aud']) {
  if (!a[required]) {
    console.error(`mint.mjs: --${required} is required`);
    process.exit(2);
  }
}
const key = createPrivateKey(readFileSync(a.key));
const alg = key.asymmetricKeyType === 'ec' ? 'ES256' : 'RS256';
const now = Math.floor(Date.now() / 1000);
const jti = randomUUID();
const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
const input = `${b64({ alg, typ: 'JWT', ...(a.kid && { kid: a.kid }) })}.${b64({
  iss: a.iss, sub: a.sub, aud: a.aud, iat: now, exp: now + Number(a.lifetime), jti,
})}`;
const signature = sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
if (a.log) appendFileSync(a.log, `${jti}\n`);
process.stdout.write(`${input}.${signature.toString('base64url')}\n`);
