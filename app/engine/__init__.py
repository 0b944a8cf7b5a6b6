"""The domain-agnostic sync engine. It never imports strawberry or starlette."""
