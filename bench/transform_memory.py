"""Peak RSS of a proxy under a burst of concurrent cold transforms of large images, with and
without the transform memory budget (docs/performance.md, "The transform memory budget").

    .venv/bin/python bench/transform_memory.py                       # defaults
    .venv/bin/python bench/transform_memory.py --threads 8 --memory 100GiB

Serves one large JPEG under ``--count`` distinct paths from a local origin (``http.server``),
starts ``mediaproxy run`` with the default settings plus ``--threads`` and ``--memory``
(``limits.transform_memory``; 0: automatic), sends ``--count`` requests ``--concurrency`` at a
time (each path once, so every one is a cold transform) while a second client requests one
cached small variant, samples the proxy's RSS every 20 ms and prints the peak, the answers by
status and how many hits were served meanwhile. Loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from PIL import Image
from proxyproc import free_port, stop


def source(width: int, height: int) -> bytes:
    """A photo-like JPEG: a gradient with noise (compresses like a photo, decodes in full)."""
    base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    noise = Image.effect_noise((width // 4, height // 4), 40).resize((width, height))
    image = Image.merge("RGB", (base.getchannel(0), noise, base.getchannel(0)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def get(url: str, timeout: float = 120) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code
    except OSError:
        return 0


def wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="processing.threads")
    parser.add_argument("--memory", default="0", help="limits.transform_memory (0: auto)")
    parser.add_argument("--count", type=int, default=24, help="cold transforms in all")
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--size", default="8000x6000", help="source WIDTHxHEIGHT")
    parser.add_argument("--width", type=int, default=6000, help="w= of every transform")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp, "media")
        media.mkdir()
        body = source(width, height)
        for i in range(args.count):
            (media / f"p{i}.jpg").write_bytes(body)
        (media / "hot.jpg").write_bytes(source(400, 300))
        origin_port, proxy_port = free_port(), free_port()
        env = {**os.environ, "MEDIAPROXY_BACKEND__URL": f"http://127.0.0.1:{origin_port}",
               "MEDIAPROXY_PROCESSING__THREADS": str(args.threads),
               "MEDIAPROXY_LIMITS__TRANSFORM_MEMORY": args.memory,
               "MEDIAPROXY_RATELIMIT__ENABLED": "false",
               # one process: its RSS is what this measures (auto would run one per core)
               "MEDIAPROXY_SERVER__WORKERS": "1",
               "MEDIAPROXY_MONITORING__LOG_LEVEL": "warn"}
        origin = subprocess.Popen([sys.executable, "-m", "http.server", str(origin_port),
                                   "--bind", "127.0.0.1", "--directory", tmp],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proxy = subprocess.Popen([sys.executable, "-m", "mediaproxy", "run", "--listen",
                                  f"tcp:{proxy_port}:interface=127.0.0.1"], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            wait_listening(origin_port, deadline)
            wait_listening(proxy_port, deadline)
            base = f"http://127.0.0.1:{proxy_port}/media"
            assert get(f"{base}/hot.jpg?w=100") == 200
            process = psutil.Process(proxy.pid)
            idle = process.memory_info().rss
            peak = [idle]
            done = threading.Event()
            hits = collections.Counter()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], process.memory_info().rss)
                    time.sleep(0.02)

            def hot():
                while not done.is_set():
                    hits[get(f"{base}/hot.jpg?w=100", timeout=10)] += 1
                    time.sleep(0.05)

            threads = [threading.Thread(target=sample), threading.Thread(target=hot)]
            for t in threads:
                t.start()
            started = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                statuses = collections.Counter(pool.map(
                    get, [f"{base}/p{i}.jpg?w={args.width}" for i in range(args.count)]))
            elapsed = time.monotonic() - started
            done.set()
            for t in threads:
                t.join(15)
            mib = 1024 * 1024
            print(f"threads={args.threads or os.cpu_count()} transform_memory={args.memory} "
                  f"source={width}x{height} ({len(body) // 1024} KiB) w={args.width} "
                  f"count={args.count} concurrency={args.concurrency}")
            print(f"  RSS idle {idle / mib:.0f} MiB, peak {peak[0] / mib:.0f} MiB; "
                  f"answers {dict(statuses)} in {elapsed:.1f} s; hits meanwhile {dict(hits)}")
        finally:
            stop(proxy, origin)


if __name__ == "__main__":
    main()
