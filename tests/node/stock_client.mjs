// A stock Node gRPC client (@grpc/grpc-js, stubs loaded from proto/ at run time by
// @grpc/proto-loader) calling tokend over its Unix socket with the library's defaults.
//
// Usage: node tests/node/stock_client.mjs --socket PATH --client NAME [--watch N] [--calls N]
//
// Over one channel it calls GetToken(NAME); with --watch N reads N+1 tokens from WatchToken (the
// current one, then N rotations, each new) within 60 s; with --calls N makes N more GetToken
// calls one after another on the same connection. On success prints one line of JSON (never a
// token): {"ok": true, "client": NAME, "watched": N, "calls": N}. On failure prints a one-line
// reason on stderr and exits 1.

import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const here = path.dirname(fileURLToPath(import.meta.url));
const protoRoot = path.join(here, "..", "..", "proto");
const RPC_DEADLINE_MS = 10_000;
const WATCH_DEADLINE_MS = 60_000;

function fail(message) {
  process.stderr.write(`FAIL: ${message.replace(/\s+/g, " ")}\n`);
  process.exit(1);
}

const { values: args } = parseArgs({
  options: {
    socket: { type: "string" },
    client: { type: "string" },
    watch: { type: "string", default: "0" },
    calls: { type: "string", default: "0" },
  },
});
if (!args.socket || !args.client) fail("usage: --socket PATH --client NAME [--watch N] [--calls N]");
const watch = Number(args.watch);
const calls = Number(args.calls);

const definition = protoLoader.loadSync("tokend/v1/tokend.proto", {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: Number,
});
const { TokenService } = grpc.loadPackageDefinition(definition).tokend.v1;
const stub = new TokenService(`unix:${args.socket}`, grpc.credentials.createInsecure());

const deadline = (ms) => new Date(Date.now() + ms);

function getToken(what) {
  return new Promise((resolve, reject) => {
    stub.GetToken({ client: args.client }, { deadline: deadline(RPC_DEADLINE_MS) }, (err, token) => {
      if (err) reject(new Error(`${what}: ${grpc.status[err.code]}: ${err.details}`));
      else if (!token.access_token || token.token_type !== "Bearer") reject(new Error(`${what}: not a token`));
      else resolve(token);
    });
  });
}

function watchTokens(n) {
  return new Promise((resolve, reject) => {
    const seen = new Set();
    const call = stub.WatchToken({ client: args.client }, { deadline: deadline(WATCH_DEADLINE_MS) });
    call.on("data", (token) => {
      if (seen.has(token.access_token)) {
        call.cancel();
        reject(new Error(`WatchToken: token #${seen.size} repeats an earlier one`));
        return;
      }
      seen.add(token.access_token);
      if (seen.size === n + 1) {
        call.cancel();
        resolve();
      }
    });
    call.on("error", (err) => {
      if (err.code !== grpc.status.CANCELLED) {
        reject(new Error(`WatchToken after ${seen.size} of ${n + 1} tokens: ${grpc.status[err.code]}: ${err.details}`));
      }
    });
    call.on("end", () => reject(new Error(`WatchToken ended after ${seen.size} of ${n + 1} tokens`)));
  });
}

try {
  await getToken("GetToken");
  if (watch > 0) await watchTokens(watch);
  for (let i = 1; i <= calls; i++) await getToken(`GetToken call ${i} of ${calls}`);
} catch (err) {
  fail(err.message);
} finally {
  stub.close();
}
process.stdout.write(`${JSON.stringify({ ok: true, client: args.client, watched: watch, calls })}\n`);
