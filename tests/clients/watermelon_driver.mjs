// Drives a WatermelonDB database (LokiJS in memory) through examples/clients/watermelon.mjs.
// One JSON command per stdin line, one JSON answer per stdout line (tests/clients/test_watermelon.py).
import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'
import { syncWithSyncgraph, CHECKPOINT_KEY } from '../../examples/clients/watermelon.mjs'

const require = createRequire(new URL('../../examples/clients/package.json', import.meta.url))
const { Database, Model, appSchema, tableSchema } = require('@nozbe/watermelondb')
const LokiJSAdapter = require('@nozbe/watermelondb/adapters/lokijs').default

const [url, key] = process.argv.slice(2)
const tables = { users: ['name', 'email'] }

// WatermelonDB reports sync anomalies ("[Sync] Server wants client to …") on the console
const warnings = []
for (const level of ['log', 'warn', 'error']) {
  console[level] = (...args) => warnings.push(args.map(String).join(' '))
}

class User extends Model {
  static table = 'users'
}

const schema = appSchema({
  version: 1,
  tables: [
    tableSchema({
      name: 'users',
      columns: [
        { name: 'name', type: 'string' },
        { name: 'email', type: 'string', isOptional: true },
      ],
    }),
  ],
})
const adapter = new LokiJSAdapter({
  schema,
  useWebWorker: false,
  useIncrementalIndexedDB: true,
  dbName: `t${process.pid}`,
})
const database = new Database({ adapter, modelClasses: [User] })
const users = database.get('users')

// What each sync sent and received, read from the wire
let traffic = []
const realFetch = globalThis.fetch
let duringPush = null
let beforePush = null
globalThis.fetch = async (resource, init) => {
  const sent = JSON.parse(init.body)
  if (beforePush && sent.query.includes('pushChanges')) {
    // another writer commits between this device's pull and its push
    const write = beforePush
    beforePush = null
    await realFetch(resource, { ...init, body: JSON.stringify(write) })
  }
  const pending = realFetch(resource, init)
  if (duringPush && sent.query.includes('pushChanges')) {
    const edit = duringPush
    duringPush = null
    await update(edit)
  }
  const response = await pending
  const body = await response.clone().json()
  traffic.push({ variables: sent.variables, data: body.data })
  return response
}

function setFields(record, fields) {
  for (const [column, value] of Object.entries(fields)) record._setRaw(column, value)
}

async function update({ id, ...fields }) {
  const record = await users.find(id)
  await database.write(() => record.update((r) => setFields(r, fields)))
}

const commands = {
  async create({ fields }) {
    const record = await database.write(() => users.create((r) => setFields(r, fields)))
    return { id: record.id }
  },
  async update({ op, ...edit }) {
    await update(edit)
    return {}
  },
  async delete({ id }) {
    const record = await users.find(id)
    await database.write(() => record.markAsDeleted())
    return {}
  },
  async sync({ limit, editDuringPush, serverWriteBeforePush }) {
    traffic = []
    duringPush = editDuringPush ?? null
    beforePush = serverWriteBeforePush ?? null
    await syncWithSyncgraph(database, { url, key, tables, limit })
    const pulls = traffic.filter((t) => t.data?.changes).map((t) => t.data.changes)
    const pushes = traffic.filter((t) => t.data?.pushChanges).map((t) => t.variables.input)
    const reports = traffic.filter((t) => t.data?.pushChanges).map((t) => t.data.pushChanges)
    return { pulls, pushes, reports }
  },
  async dump() {
    const all = await users.query().unsafeFetchRaw()
    const records = all
      .map(({ id, name, email, _status }) => ({ id, name, email, status: _status }))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    const pendingDeletes = await database.adapter.getDeletedRecords('users')
    const checkpoint = await database.localStorage.get(CHECKPOINT_KEY)
    const taken = warnings.splice(0).filter((w) => !w.includes('[Loki]'))
    return { records, pendingDeletes, checkpoint, warnings: taken }
  },
}

for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line)
  let answer
  try {
    answer = { ok: true, ...(await commands[command.op](command)) }
  } catch (error) {
    answer = { ok: false, error: String(error?.stack ?? error) }
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`)
}

// stdin closed: the test is done (LokiJS keeps timers alive otherwise)
process.exit(0)
