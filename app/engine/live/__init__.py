"""Live updates: commit notifications (``notify``), the per-tenant change hubs (``hub``)
and the action-log tails (``action_tail``) that subscriptions read from."""
