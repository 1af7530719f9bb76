"""What clients get when the transform queue sheds them, with and without the nearest-variant
offer (docs/performance.md, "The job queue").

    .venv/bin/python bench/queue_offer.py                 # offer on, then off, same burst
    .venv/bin/python bench/queue_offer.py --code /tmp/main72 --modes off

Serves ``--sources`` copies of one photo-like JPEG from a local origin (``http.server``),
starts ``mediaproxy run`` (one process, ``--threads`` threads, a short queue: ``--queue-limit``
waiters for ``--queue-timeout`` s), renders one variant of every source (``w=320``: what a page
asked for before), then sends a burst of cold requests for other widths of the same sources
(``--per-source`` each, ``--concurrency`` at a time): more than the pool can render within
the queue time, so some are shed. Prints the answers by status and ``X-Cache`` (``MISS``:
rendered; ``NEAREST``: the cached variant offered instead; 503: shed without one) and how many
hits of a cached image were served meanwhile. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from proxyproc import free_port, stop
from transform_memory import source, wait_listening   # the same photo-like source


def get(url: str, timeout: float = 60) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return response.status, response.headers.get("X-Cache", "")
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, ""
    except OSError:
        return 0, ""


def run(args, tmp: str, offer: bool) -> None:
    origin_port, proxy_port = free_port(), free_port()
    env = {**os.environ, "MEDIAPROXY_BACKEND__URL": f"http://127.0.0.1:{origin_port}",
           "MEDIAPROXY_SERVER__WORKERS": "1",
           "MEDIAPROXY_PROCESSING__THREADS": str(args.threads),
           "MEDIAPROXY_PROCESSING__QUEUE_LIMIT": str(args.queue_limit),
           "MEDIAPROXY_PROCESSING__QUEUE_TIMEOUT": str(args.queue_timeout),
           "MEDIAPROXY_CACHE__X_CACHE_HEADER": "true",
           "MEDIAPROXY_RATELIMIT__ENABLED": "false",
           "MEDIAPROXY_MONITORING__LOG_LEVEL": "error",
           "PYTHONPATH": str(Path(args.code).resolve())}
    if offer is not None:
        env["MEDIAPROXY_PROCESSING__OFFER_NEAREST"] = "true" if offer else "false"
    origin = subprocess.Popen([sys.executable, "-m", "http.server", str(origin_port),
                               "--bind", "127.0.0.1", "--directory", tmp],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = subprocess.Popen([sys.executable, "-m", "mediaproxy", "run", "--listen",
                              f"tcp:{proxy_port}:interface=127.0.0.1"], env=env,
                             cwd=args.code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        wait_listening(origin_port, deadline)
        wait_listening(proxy_port, deadline)
        base = f"http://127.0.0.1:{proxy_port}/media"
        for i in range(args.sources):
            assert get(f"{base}/p{i}.jpg?w=320")[0] == 200
        assert get(f"{base}/hot.jpg?w=100")[0] == 200
        done = threading.Event()
        hits = collections.Counter()

        def hot():
            while not done.is_set():
                hits[get(f"{base}/hot.jpg?w=100", timeout=10)[0]] += 1
                time.sleep(0.05)

        watcher = threading.Thread(target=hot)
        watcher.start()
        urls = [f"{base}/p{i}.jpg?w={400 + 8 * k}"
                for k in range(args.per_source) for i in range(args.sources)]
        started = time.monotonic()
        with ThreadPoolExecutor(args.concurrency) as pool:
            answers = collections.Counter(
                f"{status} {cache}".strip() for status, cache in pool.map(get, urls))
        elapsed = time.monotonic() - started
        done.set()
        watcher.join(15)
        label = {True: "offer_nearest=true", False: "offer_nearest=false",
                 None: "(the code's default)"}[offer]
        print(f"{label}: {len(urls)} cold requests, {args.concurrency} at a time, "
              f"threads={args.threads} queue_limit={args.queue_limit} "
              f"queue_timeout={args.queue_timeout}")
        print(f"  answers {dict(sorted(answers.items()))} in {elapsed:.1f} s; "
              f"hits meanwhile {dict(hits)}")
    finally:
        stop(proxy, origin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose mediaproxy runs")
    parser.add_argument("--modes", default="on,off",
                        help="comma-separated: on, off, default (the setting left alone)")
    parser.add_argument("--sources", type=int, default=8)
    parser.add_argument("--per-source", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queue-limit", type=int, default=8)
    parser.add_argument("--queue-timeout", type=float, default=1.0)
    parser.add_argument("--size", default="1920x1280", help="source WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp, "media")
        media.mkdir()
        body = source(width, height)
        for i in range(args.sources):
            (media / f"p{i}.jpg").write_bytes(body)
        (media / "hot.jpg").write_bytes(source(400, 300))
        modes = {"on": True, "off": False, "default": None}
        for mode in args.modes.split(","):
            run(args, tmp, modes[mode.strip()])


if __name__ == "__main__":
    main()
