// Apollo Client 4 ⇄ syncgraph: queries and mutations over HttpLink, subscriptions over
// GraphQLWsLink (graphql-ws), one InMemoryCache whose records are keyed by their id.
import { ApolloClient, HttpLink, InMemoryCache, split } from '@apollo/client'
import { GraphQLWsLink } from '@apollo/client/link/subscriptions'
import { getMainDefinition } from '@apollo/client/utilities'
import { createClient } from 'graphql-ws'

// Every syncgraph record has an `id`, unique within its tenant and entity: one client talks
// to one tenant, so `User:<id>` names one record. Add a line per entity the app reads.
const byId = { keyFields: ['id'] }

// get-by-id reads a record the list already cached instead of asking the server again
const fromCache = (typename) => ({
  read: (existing, { args, toReference }) =>
    existing ?? (args?.id ? toReference({ __typename: typename, id: args.id }) : undefined),
})

export function createSyncgraphClient({ httpUrl, wsUrl, key, tenant, webSocketImpl }) {
  const authorization = `Bearer ${key}`
  const http = new HttpLink({ uri: httpUrl, headers: { authorization } })
  const ws = new GraphQLWsLink(
    // credentials travel in connection_init; webSocketImpl: `ws` in Node, omit in browsers
    createClient({ url: wsUrl, webSocketImpl, connectionParams: { authorization, tenant } }),
  )
  const isSubscription = ({ query }) => {
    const definition = getMainDefinition(query)
    return definition.kind === 'OperationDefinition' && definition.operation === 'subscription'
  }
  const cache = new InMemoryCache({
    typePolicies: {
      User: byId,
      Query: { fields: { user: fromCache('User') } },
    },
  })
  return { client: new ApolloClient({ link: split(isSubscription, ws, http), cache }), ws }
}
