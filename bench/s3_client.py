"""What a store round trip costs the proxy process, two ways, against a real SeaweedFS on
loopback (started here, as the tests do: tests/seaweedfs.py):

* ``treq``: the plugin's client (mediaproxy_s3.client.S3Client): botocore's SigV4 signer, the
  request sent by treq on the reactor;
* ``boto``: a full botocore S3 client (``get_object``/``put_object``) called through
  ``deferToThreadPool`` on a pool of ``--threads`` threads (what "a maintained client in the
  thread pool" would do).

    .venv/bin/python bench/s3_client.py                      # 3 rounds of 300 GETs and PUTs
    .venv/bin/python bench/s3_client.py --rounds 5 --count 500 --size 60000

Each round runs ``--count`` operations, ``--concurrency`` (8) at a time, of a ``--size``-byte
object. Figures per operation, the best of ``--rounds``: the process's CPU time (user + system:
what the proxy pays, little disturbed by other processes) and the wall time (noisy on a shared
machine). Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins" / "mediaproxy-s3")]

from mediaproxy_s3 import S3Client, settings_from  # noqa: E402
from twisted.internet.defer import DeferredSemaphore, gatherResults  # noqa: E402
from twisted.internet.threads import deferToThreadPool  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

from mediaproxy.testing.reactor import call_in_reactor, reactor_thread  # noqa: E402
from tests.seaweedfs import start_seaweedfs  # noqa: E402


def rounds_of(label, run, rounds):
    best_cpu, best_wall = float("inf"), float("inf")
    for _ in range(rounds):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        count = run()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        best_cpu, best_wall = min(best_cpu, cpu / count), min(best_wall, wall / count)
    print(f"{label:24} CPU {best_cpu * 1e3:6.3f} ms/op   wall {best_wall * 1e3:6.3f} ms/op")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--size", type=int, default=20_000)
    args = parser.parse_args()

    import botocore.config
    import botocore.session

    reactor = reactor_thread()
    store = start_seaweedfs(Path(tempfile.mkdtemp(prefix="s3bench-")))
    try:
        s = settings_from(store.settings())
        client = call_in_reactor(lambda: S3Client(s.endpoint, s.bucket, s.region, s.access_key,
                                                  s.secret_key, reactor,
                                                  max_connections=args.concurrency))
        deadline = time.monotonic() + 60
        while True:     # the store answers before it takes writes
            try:
                call_in_reactor(lambda: client.request("PUT", ok=(200, 409)))
                call_in_reactor(lambda: client.put("bench/obj", b"x" * args.size, {}))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        boto = botocore.session.get_session().create_client(
            "s3", endpoint_url=s.endpoint, region_name=s.region, aws_access_key_id=s.access_key,
            aws_secret_access_key=s.secret_key, config=botocore.config.Config(
                s3={"addressing_style": "path"}, max_pool_connections=args.threads,
                retries={"max_attempts": 1}))
        pool = ThreadPool(args.threads, args.threads, "s3bench")
        pool.start()
        body = os.urandom(args.size)

        def batch(op):
            def go():
                sem = DeferredSemaphore(args.concurrency)
                return gatherResults([sem.run(op, i) for i in range(args.count)])
            call_in_reactor(go, timeout=600)
            return args.count

        def treq_get(i):
            return client.get("bench/obj", 1 << 20)

        def treq_put(i):
            return client.put(f"bench/t{i % 50}", body, {"mp-expires": "1"})

        def boto_get(i):
            return deferToThreadPool(reactor, pool, lambda: boto.get_object(
                Bucket=s.bucket, Key="bench/obj")["Body"].read())

        def boto_put(i):
            return deferToThreadPool(reactor, pool, lambda: boto.put_object(
                Bucket=s.bucket, Key=f"bench/b{i % 50}", Body=body, Metadata={"mp-expires": "1"}))

        for label, op in (("treq+signer GET", treq_get), ("botocore in pool GET", boto_get),
                          ("treq+signer PUT", treq_put), ("botocore in pool PUT", boto_put)):
            rounds_of(label, lambda op=op: batch(op), args.rounds)
        pool.stop()
        call_in_reactor(client.close)
    finally:
        store.stop()


if __name__ == "__main__":
    main()
