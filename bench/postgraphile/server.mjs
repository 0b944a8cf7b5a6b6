// PostGraphile v5 serving a database's `public` schema: the third contender of
// bench/bench_changes.py, which starts it with the Node 22 of the `node` npm package:
//
//   DATABASE_URL=postgresql://postgres@127.0.0.1:5432/DB PORT=0 NODE_ENV=production \
//     GRAPHILE_ENV=production node_modules/node/bin/node server.mjs
//
// Production-style: the Amber preset (PostGraphile's standard one) plus simplified
// inflection, no GraphiQL, no watch mode, no explain, no websockets. The schema is built
// before the port is opened; then one JSON line {"port": N} on stdout says it is ready.
// SIGTERM/SIGINT close the server and the pool.
import { createServer } from "node:http";

import { PgSimplifyInflectionPreset } from "@graphile/simplify-inflection";
import { postgraphile } from "postgraphile";
import { makePgService } from "postgraphile/adaptors/pg";
import { grafserv } from "postgraphile/grafserv/node";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";

const connectionString = process.env.DATABASE_URL;
if (!connectionString) {
  console.error("DATABASE_URL is required");
  process.exit(2);
}
const port = Number(process.env.PORT ?? 0);
const host = process.env.HOST ?? "127.0.0.1";

/** @type {GraphileConfig.Preset} */
const preset = {
  extends: [PostGraphileAmberPreset, PgSimplifyInflectionPreset],
  pgServices: [makePgService({ connectionString, schemas: ["public"] })],
  grafserv: {
    graphiql: false,
    graphiqlOnGraphQLGET: false,
    watch: false,
    websockets: false,
  },
  grafast: { explain: false },
};

function fail(error) {
  console.error(`PostGraphile failed: ${error?.message ?? error}`);
  process.exit(1);
}

const pgl = postgraphile(preset);
const serv = pgl.createServ(grafserv);
const server = createServer();
server.on("error", fail);
try {
  await pgl.getSchemaResult(); // introspect and build now, not on the first request
  await serv.addTo(server);
} catch (error) {
  fail(error);
}
server.listen(port, host, () => {
  process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`);
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  server.closeAllConnections();
  server.close();
  await pgl.release(); // releases the serv and the pool too
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
