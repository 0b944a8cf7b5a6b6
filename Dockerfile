# syncgraph: a slim image serving GraphQL on :8000, installed from a wheel.
#   docker build -t syncgraph .
#   docker run -e DATABASE_URL=postgresql+asyncpg://user:pw@db/syncgraph -p 8000:8000 syncgraph
# Without DATABASE_URL it runs in dev mode on SQLite in /srv (the dev key is in the log).

# Builder: npm puts GraphiQL's assets into the wheel (setup.py runs scripts/fetch-graphiql).
FROM node:22-bookworm-slim AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/build && /opt/build/bin/pip install --no-cache-dir build
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY scripts/fetch-graphiql scripts/fetch-graphiql
COPY app app
# The build tolerates a failed fetch (it warns); an image without GraphiQL should not.
RUN /opt/build/bin/python -m build --wheel --outdir /dist . \
    && /opt/build/bin/python -c "import glob, sys, zipfile; \
names = zipfile.ZipFile(glob.glob('/dist/*.whl')[0]).namelist(); \
sys.exit(0 if any(n.startswith('app/static/graphiql/') for n in names) else 'no GraphiQL in the wheel')"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/*.whl && rm -rf /tmp/dist \
    && useradd --system syncgraph && mkdir -p /srv && chown syncgraph /srv
WORKDIR /srv
USER syncgraph
EXPOSE 8000
CMD ["syncgraph", "serve", "--host", "0.0.0.0", "--port", "8000"]
