// WatermelonDB ⇄ syncgraph: WatermelonDB's own synchronize() with a pullChanges that pages
// syncgraph's `changes` and a pushChanges that calls `pushChanges`.
//
// The checkpoint lives beside WatermelonDB's lastPulledAt, in the database's local storage:
// syncgraph checkpoints are strings (an empty tenant's is "0", which synchronize() refuses as
// a timestamp), so `timestamp` carries the server time and the checkpoint rides along in the
// pull result; onDidPullChanges stores it inside the same write that applies the changes.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const { synchronize } = require('@nozbe/watermelondb/sync')

export const CHECKPOINT_KEY = 'syncgraph.checkpoint'

// tables: { users: ['name', 'email'] } — WatermelonDB table = syncgraph collection field,
// columns = the GraphQL field names (camelCase) that the app syncs.
function pullQuery(tables) {
  const selection = Object.entries(tables).map(([table, columns]) => {
    const fields = ['id', ...columns].join(' ')
    return `${table} { inserted { ${fields} } updated { ${fields} } deleted }`
  })
  return `query Pull($since: String, $limit: Int) {
    changes(since: $since, limit: $limit) {
      checkpoint hasMore fullSyncRequired serverTime ${selection.join(' ')}
    }
  }`
}

const PUSH = `mutation Push($input: PushInput!) {
  pushChanges(input: $input) {
    checkpoint caughtUp applied conflicts { entity id reason } errors { entity id code message }
  }
}`

async function request(url, key, query, variables) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ query, variables }),
  })
  const body = await response.json()
  if (!response.ok || body.errors) {
    throw new Error(`syncgraph: ${response.status} ${JSON.stringify(body.errors)}`)
  }
  return body.data
}

// Merge one page into the WatermelonDB change set. A record is in at most one list; a first
// sync (since null) starts from an empty device, so everything it brings is `created`.
function mergePage(changes, page, tables, firstSync) {
  for (const table of Object.keys(tables)) {
    const into = changes[table]
    const { inserted, updated, deleted } = page[table]
    for (const raw of [...inserted, ...updated]) {
      const created = firstSync || inserted.includes(raw) || into.created.has(raw.id)
      into.created.delete(raw.id)
      into.updated.delete(raw.id)
      into[created ? 'created' : 'updated'].set(raw.id, raw)
      into.deleted.delete(raw.id)
    }
    for (const id of deleted) {
      into.created.delete(id)
      into.updated.delete(id)
      into.deleted.add(id)
    }
  }
}

async function pullChanges(database, { url, key, tables, limit }) {
  const since = (await database.localStorage.get(CHECKPOINT_KEY)) ?? null
  const query = pullQuery(tables)
  const merged = Object.fromEntries(
    Object.keys(tables).map((t) => [t, { created: new Map(), updated: new Map(), deleted: new Set() }]),
  )
  let checkpoint = since
  let page
  do {
    page = (await request(url, key, query, { since: checkpoint, limit })).changes
    if (page.fullSyncRequired) {
      throw new Error('syncgraph: full sync required — reset the local database and sync again')
    }
    mergePage(merged, page, tables, since === null)
    checkpoint = page.checkpoint
  } while (page.hasMore)
  const changes = Object.fromEntries(
    Object.entries(merged).map(([t, c]) => [
      t,
      { created: [...c.created.values()], updated: [...c.updated.values()], deleted: [...c.deleted] },
    ]),
  )
  return { changes, timestamp: Date.parse(page.serverTime), checkpoint }
}

function pick(raw, columns) {
  return Object.fromEntries(columns.map((column) => [column, raw[column] ?? null]))
}

async function pushChanges(database, { url, key, tables }, changes) {
  const since = (await database.localStorage.get(CHECKPOINT_KEY)) ?? null
  const input = { since, atomic: true }
  for (const [table, columns] of Object.entries(tables)) {
    const { created = [], updated = [], deleted = [] } = changes[table] ?? {}
    input[table] = {
      inserted: created.map((raw) => ({ id: raw.id, data: pick(raw, columns) })),
      updated: updated.map((raw) => ({ id: raw.id, data: pick(raw, columns) })),
      deleted: deleted.map((id) => ({ id })),
    }
  }
  const report = (await request(url, key, PUSH, { input })).pushChanges
  if (report.conflicts.length || report.errors.length) {
    // atomic: nothing was applied; the next synchronize() pulls the server's side first
    throw new Error(`syncgraph push refused: ${JSON.stringify(report)}`)
  }
  if (report.caughtUp) {
    // nothing else was written since our checkpoint: skip our own changes on the next pull
    await database.localStorage.set(CHECKPOINT_KEY, report.checkpoint)
  }
}

// Sync `database` with syncgraph at `url` (http://host/graphql) using an API key or device token.
export function syncWithSyncgraph(database, { url, key, tables, limit = 1000 }) {
  const options = { url, key, tables, limit }
  return synchronize({
    database,
    pullChanges: () => pullChanges(database, options),
    onDidPullChanges: ({ checkpoint }) => database.localStorage.set(CHECKPOINT_KEY, checkpoint),
    pushChanges: ({ changes }) => pushChanges(database, options, changes),
  })
}
