"""Entry point for multi-worker uvicorn (``app.asgi:app``): settings from the environment."""

from app.cli import tune_gc
from app.main import create_app

app = create_app()
tune_gc()
