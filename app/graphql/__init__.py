"""The GraphQL layer: Strawberry types and resolvers generated from the registry. Thin: it
parses, checks credentials and limits, calls the engine and shapes the answer."""
