// Prints CLIENT's access token from tokend, like `tokend get CLIENT`.
//
// Usage: node get-token.js CLIENT
// The socket is $TOKEND_SOCKET, else /run/tokend/tokend.sock. Exit 0 with the token on stdout, or
// 1 with the reason on stderr.

import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const socket = process.env.TOKEND_SOCKET || "/run/tokend/tokend.sock";
const client = process.argv[2];
if (!client || process.argv.length > 3) {
  console.error("usage: node get-token.js CLIENT");
  process.exit(2);
}

// The service definition is read from the .proto at run time: no generated code.
const protoDir = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "proto");
const definition = protoLoader.loadSync("tokend/v1/tokend.proto", {
  includeDirs: [protoDir],
  keepCase: true,
  longs: Number,
});
const { TokenService } = grpc.loadPackageDefinition(definition).tokend.v1;
const tokend = new TokenService(`unix:${socket}`, grpc.credentials.createInsecure());

// Without a token yet, tokend waits for the first one; the deadline bounds that wait.
const deadline = new Date(Date.now() + 10_000);
tokend.GetToken({ client }, { deadline }, (err, token) => {
  tokend.close();
  if (err) {
    console.error(`tokend at ${socket}: ${grpc.status[err.code]}: ${err.details}`);
    process.exit(1);
  }
  // In an application: ask again before every request (it is a local call, answered at once),
  // send `${token.token_type} ${token.access_token}` as the Authorization header, and on a 401
  // call RefreshToken({client, rejected_access_token}) for the replacement.
  console.log(token.access_token);
});
