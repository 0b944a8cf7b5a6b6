# syncgraph: a slim image serving GraphQL on :8000. PostgreSQL through DATABASE_URL, e.g.
#   docker run -e DATABASE_URL=postgresql+asyncpg://user:pw@db/syncgraph -p 8000:8000 syncgraph
FROM node:22-bookworm-slim AS graphiql
WORKDIR /src
COPY scripts/fetch-graphiql scripts/fetch-graphiql
COPY app/graphiql.py app/graphiql.py
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip \
    && pip3 install --break-system-packages "strawberry-graphql>=0.341,<0.342" \
    && PYTHON=python3 bash scripts/fetch-graphiql

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app app
COPY migrations migrations
RUN pip install --no-cache-dir -e .
COPY --from=graphiql /src/app/static/graphiql app/static/graphiql
RUN useradd --system syncgraph && chown -R syncgraph /srv
USER syncgraph
EXPOSE 8000
CMD ["syncgraph", "serve", "--host", "0.0.0.0", "--port", "8000"]
