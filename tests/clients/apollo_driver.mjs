// Drives Apollo Client 4 built by examples/clients/apollo.mjs against a live server.
// One JSON command per stdin line, one JSON answer per stdout line (tests/clients/test_apollo.py).
import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'
import { createSyncgraphClient } from '../../examples/clients/apollo.mjs'

const require = createRequire(new URL('../../examples/clients/package.json', import.meta.url))
const { gql, CombinedGraphQLErrors, ServerError } = require('@apollo/client')
const WebSocket = require('ws')

const [host, key, tenant] = process.argv.slice(2)
const httpUrl = `http://${host}/graphql`
const wsUrl = `ws://${host}/graphql`
const { client, ws } = createSyncgraphClient({ httpUrl, wsUrl, key, tenant, webSocketImpl: WebSocket })

const USERS = gql`query Users { users(first: 100) { nodes { id name email version } totalCount } }`
const USER = gql`query User($id: ID!) { user(id: $id) { id name email version } }`
const RENAME = gql`mutation Rename($id: ID!, $name: String!) {
  sync(input: { users: { data: [{ id: $id, name: $name }] } }) {
    checkpoint users { updated ids errors { code message } }
  }
}`
const LIVE = gql`subscription Live($since: String) {
  changes(since: $since) {
    checkpoint hasMore users { inserted { id name email version } updated { id name email version } deleted }
  }
}`

// Every request that reached the network (a cache hit sends none)
let requests = 0
const realFetch = globalThis.fetch
globalThis.fetch = (...args) => {
  requests += 1
  return realFetch(...args)
}

const emissions = []
let waiting = null
let subscription = null

function errorCode(error) {
  if (CombinedGraphQLErrors.is(error)) {
    return { kind: 'graphql', code: error.errors[0]?.extensions?.code ?? null }
  }
  return { kind: ServerError.is(error) ? 'server' : String(error), code: null, status: error.statusCode }
}

const commands = {
  async list() {
    const { data } = await client.query({ query: USERS, fetchPolicy: 'network-only' })
    return { data, requests }
  },
  async get({ id }) {
    const { data } = await client.query({ query: USER, variables: { id } })
    return { data, requests }
  },
  async rename({ id, name }) {
    const { data } = await client.mutate({ mutation: RENAME, variables: { id, name } })
    return { data }
  },
  async cached({ id }) {
    return { user: client.readQuery({ query: USER, variables: { id } })?.user ?? null }
  },
  async subscribe({ since }) {
    subscription = client.subscribe({ query: LIVE, variables: { since } }).subscribe({
      next: (result) => {
        emissions.push(result.error ? { error: String(result.error) } : result.data.changes)
        waiting?.()
      },
    })
    return {}
  },
  async next() {
    while (emissions.length === 0) await new Promise((resolve) => (waiting = resolve))
    return { changes: emissions.shift() }
  },
  async badKey() {
    const bad = createSyncgraphClient({
      httpUrl,
      wsUrl,
      key: 'sgk_not-a-key',
      tenant,
      webSocketImpl: WebSocket,
    })
    try {
      await bad.client.query({ query: USERS })
      return { error: null }
    } catch (error) {
      return { error: errorCode(error) }
    }
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
subscription?.unsubscribe()
await ws.client.dispose()
process.exit(0)
