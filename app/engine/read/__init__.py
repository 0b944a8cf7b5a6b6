"""Reading the store: the change feed (``changes``) and browsing reads (``records``)."""
