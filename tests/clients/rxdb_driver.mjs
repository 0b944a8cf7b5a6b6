// Two RxDB databases (memory storage) replicating through examples/clients/rxdb.mjs.
// One JSON command per stdin line, one JSON answer per stdout line (tests/clients/test_rxdb.py).
import { createInterface } from 'node:readline'
import { replicateUsers, userSchema } from '../../examples/clients/rxdb.mjs'
import { createRxDatabase } from '../../examples/clients/node_modules/rxdb/dist/esm/index.js'
import { getRxStorageMemory } from '../../examples/clients/node_modules/rxdb/dist/esm/plugins/storage-memory/index.js'

const [host, key, tenant] = process.argv.slice(2)
const options = { httpUrl: `http://${host}/graphql`, wsUrl: `ws://${host}/graphql`, key, tenant }

const clients = {}
for (const name of ['a', 'b']) {
  const database = await createRxDatabase({
    name: `${name}${process.pid}`,
    storage: getRxStorageMemory(),
    multiInstance: false,
  })
  const { users } = await database.addCollections({ users: { schema: userSchema } })
  const replication = replicateUsers(users, options)
  const errors = []
  replication.error$.subscribe((error) => errors.push(String(error?.parameters?.errors ?? error)))
  clients[name] = { database, users, replication, errors }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function docs(users) {
  const all = await users.find().exec()
  return all.map((d) => d.toJSON()).sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0))
}

const commands = {
  async insert({ db, id, name }) {
    await clients[db].users.insert({ id, name, email: null, version: 0 })
    return {}
  },
  async patch({ db, id, ...fields }) {
    delete fields.op
    await (await clients[db].users.findOne(id).exec()).incrementalPatch(fields)
    return {}
  },
  async remove({ db, id }) {
    await (await clients[db].users.findOne(id).exec()).remove()
    return {}
  },
  async pause({ db }) {
    await clients[db].replication.pause()
    return {}
  },
  async resume({ db }) {
    await clients[db].replication.start()
    return {}
  },
  async inSync({ db }) {
    await clients[db].replication.awaitInSync()
    return {}
  },
  // Wait until the database holds `expect` (live updates arrive through the subscription)
  async waitFor({ db, expect, within = 20000 }) {
    const wanted = JSON.stringify(expect)
    for (let waited = 0; waited < within; waited += 50) {
      if (JSON.stringify(await docs(clients[db].users)) === wanted) return { docs: expect }
      await sleep(50)
    }
    return { docs: await docs(clients[db].users), errors: clients[db].errors }
  },
  async dump({ db }) {
    return { docs: await docs(clients[db].users), errors: clients[db].errors }
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
for (const { replication, database } of Object.values(clients)) {
  await replication.cancel()
  await database.close()
}
process.exit(0)
