"""A lending library on syncgraph (its entities and view are in ``library_sync.models``)."""
