import argparse, asyncio, time, functools, collections, sys
from bench import profile as P
from bench.common import running_server
import app.engine.sync as S, app.engine.rows as R, app.engine.service as SV, app.engine.seq as SQ
import app.engine.driver as D
from sqlalchemy.ext.asyncio import AsyncConnection

T = collections.defaultdict(float)
def wrap(obj, name, label, is_async):
    f = getattr(obj, name)
    if is_async:
        @functools.wraps(f)
        async def w(*a, **k):
            t = time.perf_counter()
            try: return await f(*a, **k)
            finally: T[label] += time.perf_counter() - t
    else:
        @functools.wraps(f)
        def w(*a, **k):
            t = time.perf_counter()
            try: return f(*a, **k)
            finally: T[label] += time.perf_counter() - t
    setattr(obj, name, w)

wrap(S, "normalize_items", "normalize", False)
wrap(S, "resolve_references", "references", True)
wrap(S, "load_rows", "load_rows", True)
wrap(R, "lock_keys", "  lock_keys", True)
wrap(R, "select_rows", "  select_rows", True)
wrap(D.TableReader, "rows", "    reader.rows", False)
wrap(S, "_plan", "plan", False)
wrap(SV, "stamp", "stamp(write)", True)
wrap(D.TableWriter, "parameters", "  writer.params", False)
wrap(AsyncConnection, "exec_driver_sql", "  exec_driver_sql(all)", True)
wrap(AsyncConnection, "commit", "commit", True)
wrap(SV.SyncService, "sync", "service.sync", True)

async def main(backend, entity, what):
    args = argparse.Namespace(backend=backend, what=what, entity=entity, rows=10000)
    async with running_server(args.backend) as srv:
        work = await P._workload(srv, args)
        T.clear()
        t = time.perf_counter(); await work(); total = time.perf_counter() - t
        print(backend, entity, what, f"request {total*100:.1f} ms")
        for k, v in T.items(): print(f"  {k:22s} {v*100:6.1f} ms")
asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
