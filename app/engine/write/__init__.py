"""The one write road: every writer (sync, pushChanges, the entity actions, import) goes
through the same transaction edge (``tx``) and the same per-entity row set (``rowset``):
load the rows the batch names, let a policy plan each item, release aliases, write, tombstone,
then stamp, notify and publish."""
