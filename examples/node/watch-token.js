// Prints a line for CLIENT's current token, then one per rotation: a fingerprint (the first 8 hex
// digits of the token's SHA-256, as tokend logs it) and the expiry. Never the token itself.
//
// Usage: node watch-token.js CLIENT [--count N]    (stop after N rotations; default: until ^C)
// The socket is $TOKEND_SOCKET, else /run/tokend/tokend.sock.

import { createHash } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const socket = process.env.TOKEND_SOCKET || "/run/tokend/tokend.sock";
let args;
try {
  args = parseArgs({ options: { count: { type: "string" } }, allowPositionals: true });
} catch (err) {
  console.error(`${err.message}\nusage: node watch-token.js CLIENT [--count N]`);
  process.exit(2);
}
const [client] = args.positionals;
const count = args.values.count === undefined ? Infinity : Number(args.values.count);
if (!client || args.positionals.length > 1 || !(count >= 0)) {
  console.error("usage: node watch-token.js CLIENT [--count N]");
  process.exit(2);
}

const protoDir = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "proto");
const definition = protoLoader.loadSync("tokend/v1/tokend.proto", {
  includeDirs: [protoDir],
  keepCase: true,
  longs: Number,
});
const { TokenService } = grpc.loadPackageDefinition(definition).tokend.v1;
const tokend = new TokenService(`unix:${socket}`, grpc.credentials.createInsecure());

function describe(token) {
  const fingerprint = createHash("sha256").update(token.access_token).digest("hex").slice(0, 8);
  const expires = new Date(token.expires_at.seconds * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  return `token sha256:${fingerprint} expires ${expires}`;
}

// No deadline: the stream stays open for as long as we read it.
const stream = tokend.WatchToken({ client });
let seen = 0;
try {
  for await (const token of stream) {
    console.log(`${seen === 0 ? "current" : "rotated"} ${describe(token)}`);
    if (seen++ === count) {
      stream.cancel();
      break;
    }
  }
  if (seen <= count) {
    console.error(`tokend at ${socket} ended the stream (shutting down?)`);
    process.exitCode = 1;
  }
} catch (err) {
  console.error(`tokend at ${socket}: ${grpc.status[err.code]}: ${err.details}`);
  process.exitCode = 1;
} finally {
  tokend.close();
}
