// The peer: PostGraphile serving the benchmark's database under the same row-level security as the API.
//
//     node server.js --host 127.0.0.1 --port 8002 --workers 2
//
// with DATABASE_URL (the login role, as the API gets it) and BETTER_AUTH_SECRET (the HS256 secret the
// API verifies tokens with) in the environment. `bench.run --server postgraphile` starts it in place of
// `todo-api serve`. Configured as PostGraphile's JWT guide recommends: the server verifies the token
// itself in the grafast context callback, and hands PostgreSQL only what the policies need through
// pgSettings, which PostGraphile sets with set_config(..., true) inside each request's transaction:
// `role` = todo_app and `app.user_id` = the token's subject. Production mode: no GraphiQL, no watch,
// no explain. One node:cluster worker per --workers, sharing the port, as the API runs one process
// per worker.

import cluster from "node:cluster";
import { createServer } from "node:http";
import { parseArgs } from "node:util";

import jwt from "jsonwebtoken";
import { postgraphile } from "postgraphile";
import { makePgService } from "postgraphile/adaptors/pg";
import { grafserv } from "postgraphile/grafserv/node";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";

const APP_ROLE = "todo_app";

const { values: options } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "8002" },
    workers: { type: "string", default: "2" },
  },
});

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`postgraphile: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

class Unauthorized extends Error {
  statusCode = 401;
}

// The claims the API itself insists on (api/auth/verification.py): HS256 only, a signature made
// with the shared secret, an expiry in the future and a subject.
function userIdFrom(authorization, secret) {
  const [scheme, token] = (authorization ?? "").split(" ");
  if (scheme?.toLowerCase() !== "bearer" || !token) {
    throw new Unauthorized("a Bearer token is required");
  }
  let claims;
  try {
    claims = jwt.verify(token, secret, { algorithms: ["HS256"] });
  } catch (error) {
    throw new Unauthorized(`invalid token: ${error.message}`);
  }
  if (typeof claims.sub !== "string" || !claims.sub || typeof claims.exp !== "number") {
    throw new Unauthorized("the token needs sub and exp");
  }
  return claims.sub;
}

function preset(databaseUrl, secret) {
  return {
    extends: [PostGraphileAmberPreset],
    pgServices: [makePgService({ connectionString: databaseUrl, schemas: ["public"] })],
    grafast: {
      explain: false,
      context(requestContext) {
        const userId = userIdFrom(requestContext.node?.req?.headers.authorization, secret);
        // app.notify_after_commit: the peer writes the same event rows every writer of this schema
        // writes, but has no streams to wake, so it tells the trigger not to NOTIFY (the API does
        // so itself after COMMIT): both sides pay the same database work but the API's wake-up.
        const pgSettings = { role: APP_ROLE, "app.user_id": userId, "app.notify_after_commit": "on" };
        return { pgSettings };
      },
    },
    grafserv: { graphiql: false, watch: false, websockets: false },
  };
}

async function serve() {
  const pgl = postgraphile(preset(required("DATABASE_URL"), required("BETTER_AUTH_SECRET")));
  await pgl.getSchema(); // introspected before the first request, so that readiness means ready
  const serv = pgl.createServ(grafserv);
  const graphql = serv.createHandler();
  const server = createServer((req, res) =>
    graphql(req, res, () => {
      // Anything grafserv does not serve: the harness's readiness probe, or a 404.
      const ready = req.method === "GET" && req.url === "/readyz";
      res.writeHead(ready ? 200 : 404, { "Content-Type": "application/json" });
      res.end(ready ? '{"status":"ok"}' : "{}");
    }),
  );
  server.listen(Number(options.port), options.host);
  process.on("SIGTERM", () => server.close(() => pgl.release().then(() => process.exit(0))));
}

if (cluster.isPrimary) {
  for (let worker = 0; worker < Number(options.workers); worker++) {
    cluster.fork();
  }
  cluster.on("exit", (worker, code, signal) => {
    console.error(`postgraphile: worker ${worker.process.pid} exited (${signal ?? code})`);
  });
  // Stop the workers, then leave once they are gone (the harness kills what is left after a grace).
  process.on("SIGTERM", () => {
    for (const worker of Object.values(cluster.workers)) {
      worker.process.kill("SIGTERM");
    }
    cluster.on("exit", () => Object.keys(cluster.workers).length === 0 && process.exit(0));
  });
} else {
  await serve();
}
