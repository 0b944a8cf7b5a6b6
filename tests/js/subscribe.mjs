// A frontend as it really subscribes: the `graphql-ws` npm client (graphql-transport-ws) over
// the `ws` package, credentials in connection_init.
//
//   node tests/js/subscribe.mjs <ws-url> <key> <tenant> [live-emissions=1] [since]
//
// After the first emission (the catch-up page that says the client is current) it prints one
// line {"ready": true, ...}; the caller then writes. After `live-emissions` more emissions it
// prints everything it saw as one JSON line and exits 0. A refused or failed subscription
// also prints one JSON line (with "error" and "closeCode") and exits 0: the caller asserts.
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const [url, key, tenant, count = "1", since = null] = process.argv.slice(2);
if (!url || !key || !tenant) {
  process.stderr.write("usage: subscribe.mjs <ws-url> <key> <tenant> [count] [since]\n");
  process.exit(2);
}
const wanted = Number(count);
const out = { ack: null, emissions: [], error: null, closeCode: null };
let finished = false;

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  lazy: true,
  retryAttempts: 0,
  connectionParams: { authorization: `Bearer ${key}`, tenant },
  on: {
    connected: (_socket, payload) => {
      out.ack = payload ?? {};
    },
    closed: (event) => {
      out.closeCode = event && typeof event.code === "number" ? event.code : null;
    },
  },
});

function print(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function finish(exitCode) {
  if (finished) return;
  finished = true;
  print(out);
  await client.dispose();
  process.exit(exitCode);
}

const query = `subscription($since: String) {
  changes(since: $since) {
    checkpoint hasMore
    users { inserted { id name } updated { id name } deleted }
  }
}`;

client.subscribe(
  { query, variables: { since } },
  {
    next: (result) => {
      out.emissions.push(result);
      if (out.emissions.length === 1) {
        print({ ready: true, ack: out.ack, checkpoint: result.data?.changes?.checkpoint });
      }
      if (out.emissions.length > wanted) void finish(0);
    },
    error: (error) => {
      out.error =
        error && typeof error.code === "number"
          ? { code: error.code, reason: error.reason ?? "" }
          : { message: String(error?.message ?? JSON.stringify(error)) };
      if (error && typeof error.code === "number") out.closeCode = error.code;
      void finish(0);
    },
    complete: () => void finish(0),
  },
);

setTimeout(() => {
  out.error = { message: "timed out" };
  void finish(1);
}, 20_000);
