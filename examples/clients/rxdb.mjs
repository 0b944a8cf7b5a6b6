// RxDB 17 ⇄ syncgraph: replicateGraphQL pulls `changes` from a checkpoint, pushes through
// `pushChanges` (conflicts come back as the server's record), and follows
// `subscription changes` over graphql-ws for live updates.
import { replicateGraphQL } from 'rxdb/plugins/replication-graphql'

// The RxDB schema of a synced collection: syncgraph's `id` is the primary key (any string of
// 1–36 characters from [A-Za-z0-9_-]); `version` is the server's, sent back as baseVersion.
export const userSchema = {
  version: 0,
  primaryKey: 'id',
  type: 'object',
  properties: {
    id: { type: 'string', maxLength: 36 },
    name: { type: 'string' },
    email: { type: ['string', 'null'] },
    version: { type: 'integer' },
  },
  required: ['id', 'name'],
}
const FIELDS = ['name', 'email']

const USER = 'id name email version'
const CHANGES = `checkpoint hasMore users { inserted { ${USER} } updated { ${USER} } deleted }`
const PULL = `query Pull($since: String, $limit: Int) { changes(since: $since, limit: $limit) { ${CHANGES} } }`
const LIVE = `subscription Live($since: String) { changes(since: $since) { ${CHANGES} } }`
const PUSH = `mutation Push($input: PushInput!) {
  pushChanges(input: $input) { checkpoint conflicts { id reason serverRecord } errors { id code message } }
}`

// A ChangeSet as RxDB's { documents, checkpoint }: deletes are documents with _deleted
function toRxdb(changes) {
  const { inserted, updated, deleted } = changes.users
  const documents = [
    ...[...inserted, ...updated].map((doc) => ({ ...doc, _deleted: false })),
    ...deleted.map((id) => ({ id, name: '', email: null, version: 0, _deleted: true })),
  ]
  return { documents, checkpoint: { since: changes.checkpoint } }
}

function pick(doc) {
  return Object.fromEntries(FIELDS.map((field) => [field, doc[field] ?? null]))
}

// RxDB's push rows → PushInput. A row without an assumed master state is a create that must
// not exist yet (baseVersion 0 → ALREADY_EXISTS); otherwise the master's version is the base.
function pushInput(rows) {
  const users = { inserted: [], updated: [], deleted: [] }
  for (const { assumedMasterState: master, newDocumentState: doc } of rows) {
    if (doc._deleted) users.deleted.push({ id: doc.id, baseVersion: master?.version })
    else if (!master) users.inserted.push({ id: doc.id, baseVersion: 0, data: pick(doc) })
    else users.updated.push({ id: doc.id, baseVersion: master.version, data: pick(doc) })
  }
  return { users }
}

// Conflicts → the server's current documents, which RxDB's conflict handler resolves
function conflictsToMasterStates(report) {
  if (report.errors.length) throw new Error(`syncgraph push: ${JSON.stringify(report.errors)}`)
  return report.conflicts.map(({ id, serverRecord: r }) =>
    r && !r.deleted
      ? { id, name: r.name, email: r.email ?? null, version: r.version, _deleted: false }
      : { id, name: '', email: null, version: r?.version ?? 0, _deleted: true },
  )
}

export function replicateUsers(collection, { httpUrl, wsUrl, key, tenant }) {
  let since = null // the stream starts where the last pull ended (RxDB re-pulls on connect)
  return replicateGraphQL({
    collection,
    replicationIdentifier: `syncgraph-users-${httpUrl}`,
    url: { http: httpUrl, ws: wsUrl },
    headers: { authorization: `Bearer ${key}` },
    live: true,
    waitForLeadership: false,
    pull: {
      batchSize: 100,
      queryBuilder: (checkpoint, limit) => ({
        query: PULL,
        operationName: 'Pull',
        variables: { since: checkpoint?.since ?? null, limit },
      }),
      responseModifier: (changes) => {
        since = changes.checkpoint
        return toRxdb(changes)
      },
      streamQueryBuilder: () => ({ query: LIVE, operationName: 'Live', variables: { since } }),
      wsOptions: { connectionParams: { authorization: `Bearer ${key}`, tenant } },
    },
    push: {
      batchSize: 100,
      queryBuilder: (rows) => ({ query: PUSH, operationName: 'Push', variables: { input: pushInput(rows) } }),
      responseModifier: conflictsToMasterStates,
    },
  })
}
