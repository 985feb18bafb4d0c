// A real Better Auth server for tests/interop: email and password sign-in, the jwt() plugin, and
// the in-memory adapter, on a free loopback port. Prints {"baseURL": ...} once it is listening.
// Usage: node server.mjs [OPTIONS]   OPTIONS is JSON, every member optional:
//   alg        EdDSA | ES256 | ES512 | RS256 | PS256   (absent: the plugin's default)
//   basePath   where Better Auth's routes are mounted   (absent: /api/auth)
//   issuer, audience   the jwt() plugin's jwt.issuer and jwt.audience
//   jwt        false: no jwt() plugin, as a frontend that forgot it
import { randomBytes } from "node:crypto";
import { createServer } from "node:http";

import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";

const options = JSON.parse(process.argv[2] ?? "{}");
const jwtOptions = {
  ...(options.alg ? { jwks: { keyPairConfig: { alg: options.alg } } } : {}),
  ...(options.issuer || options.audience
    ? { jwt: { issuer: options.issuer, audience: options.audience } }
    : {}),
};
let handle = (_request, response) => {
  response.writeHead(503).end();
};
const server = createServer((request, response) => handle(request, response));

server.listen(0, "127.0.0.1", () => {
  const baseURL = `http://127.0.0.1:${server.address().port}`;
  const auth = betterAuth({
    baseURL,
    ...(options.basePath ? { basePath: options.basePath } : {}),
    secret: randomBytes(32).toString("hex"),
    database: memoryAdapter({ user: [], session: [], account: [], verification: [], jwks: [] }),
    emailAndPassword: { enabled: true },
    user: { deleteUser: { enabled: true } },
    plugins: options.jwt === false ? [] : [jwt(jwtOptions)],
    rateLimit: { enabled: false },
    telemetry: { enabled: false },
  });
  handle = toNodeHandler(auth);
  process.stdout.write(JSON.stringify({ baseURL }) + "\n");
});

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
