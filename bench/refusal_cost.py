"""What one refusal costs the proxy while its transform queue is full (docs/performance.md,
"Overload"): CPU per refused cold request on a new connection, against a memory hit on a new
connection and on a keep-alive one, for this checkout and optionally another (``--code DIR``).

    .venv/bin/python bench/refusal_cost.py                      # this checkout
    .venv/bin/python bench/refusal_cost.py --code /tmp/o-base   # and another, in turns
    .venv/bin/python bench/refusal_cost.py --profile /tmp/rc    # + py-spy of the refusals

During an overload the proxy's reactor accepts, parses, checks and refuses hundreds of new
connections a second, and the cache hits it answers meanwhile wait for that work: the CPU a
refusal costs is what the hits pay for. Wall-clock figures on a shared machine are noise; the
proxy process's CPU time (user + system, all its threads, from psutil) per request is not.

Each proxy (``mediaproxy run``, one process, ``--threads`` 1, ``processing.queue_limit`` 1, a
file layer in a temporary directory: the path a request takes in the default deployment, where
the workers' host layer is a file layer) sits in front of a local origin that serves the shared
bench's corpus files and *holds* any path under ``/hang/`` (at most ``--hold`` s). Three such
requests hold the door's places, so every later never-seen image is refused 503 at the door.
Then, ``--rounds`` times, in turns between the checkouts: ``--requests`` never-seen image
URLs, each on a new connection (the refusals); as many hits of one cached image on new
connections; as many on one keep-alive connection. The best round (least disturbed) of each is
reported, in microseconds of proxy CPU per request. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from proxyproc import free_port, proxy_env, run_command, start, stop

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path("/tmp/mediaproxy-bench/corpus")
HIT = "/media/uploads/photo_800.jpg?w=200&h=150&fit=inside&fmt=jpeg"


class Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True
    hold: threading.Event
    hold_seconds: float

    def handle_error(self, request, client_address):
        pass   # a client (the proxy) gone before its answer: nothing to report


class OriginHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 -- the standard library's name
        name = self.path.split("?")[0].rsplit("/", 1)[-1]
        if "/hang/" in self.path:
            self.server.hold.wait(self.server.hold_seconds)
        data = (CORPUS / name).read_bytes() if (CORPUS / name).is_file() else None
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def get(port: int, path: str, timeout: float = 30) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Proxy:
    def __init__(self, code: Path, origin: int, threads: int):
        self.code = code
        self.port = free_port()
        self.cache_dir = tempfile.mkdtemp(prefix="o-refusal-")
        env = proxy_env(code, f"127.0.0.1:{origin}", PROCESSING__THREADS=str(threads),
                        PROCESSING__QUEUE_LIMIT="1", CACHE__FILE__DIR=self.cache_dir,
                        # the held fetches must outlast the run: no 504 frees the door
                        BACKEND__HEADER_TIMEOUT="3600", BACKEND__SOURCE_TIMEOUT="3600")
        self.proc, _ = start(run_command(self.port), code, env, self.port)
        self.ps = psutil.Process(self.proc.pid)
        self.n = 0
        self.holders: list[threading.Thread] = []

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def hold_door(self, count: int = 3) -> None:
        for i in range(count):
            t = threading.Thread(target=self._held, args=(i,), daemon=True)
            t.start()
            self.holders.append(t)
            time.sleep(0.3)

    def _held(self, i: int) -> None:
        try:
            get(self.port, f"/media/uploads/hang/{i}/photo_800.jpg?w=100", timeout=120)
        except OSError:
            pass

    def cold(self) -> str:
        self.n += 1
        return f"/media/uploads/c/{self.n}/photo_800.jpg?w=300&h=200&fit=inside&fmt=jpeg"

    def round(self, kind: str, count: int) -> tuple[float, dict[int, int]]:
        """Proxy CPU microseconds per request of ``count`` requests of ``kind``."""
        statuses: dict[int, int] = {}
        before = self.cpu()
        if kind == "hit keep-alive":
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            for _ in range(count):
                conn.request("GET", HIT)
                response = conn.getresponse()
                response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            conn.close()
        else:
            for _ in range(count):
                status = get(self.port, self.cold() if kind == "refusal" else HIT)
                statuses[status] = statuses.get(status, 0) + 1
        time.sleep(0.2)   # the last requests' close and log are counted too
        return 1e6 * (self.cpu() - before) / count, statuses

    def close(self) -> None:
        stop(self.proc)
        shutil.rmtree(self.cache_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, action="append", default=[],
                        help="another checkout to measure in turns (repeatable)")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hold", type=float, default=600.0, help="most seconds held")
    parser.add_argument("--profile", type=Path, help="py-spy raw stacks of this checkout's "
                        "refusals (PREFIX.raw)")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        raise SystemExit(f"{CORPUS} missing: /tmp/mediaproxy-bench/peers.sh start")
    origin = Origin(("127.0.0.1", 0), OriginHandler)
    origin.hold, origin.hold_seconds = threading.Event(), args.hold
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    codes = [ROOT, *[c.resolve() for c in args.code]]
    proxies: list[Proxy] = []
    kinds = ("refusal", "hit new connection", "hit keep-alive")
    best: dict[tuple[int, str], float] = {}
    try:
        for code in codes:
            proxy = Proxy(code, origin.server_address[1], args.threads)
            proxies.append(proxy)
            for _ in range(2):
                assert get(proxy.port, HIT) == 200, "the hit URL is not served"
            proxy.hold_door()
            status = get(proxy.port, proxy.cold())
            if status != 503:
                raise SystemExit(f"{code}: a cold request got {status}, not 503: door not held")
        for r in range(args.rounds):
            for i, proxy in enumerate(proxies):
                spy = None
                if args.profile and i == 0 and r == 0:
                    spy = subprocess.Popen(
                        [str(Path(sys.executable).parent / "py-spy"), "record", "-p",
                         str(proxy.proc.pid), "-r", "500", "-d", "600", "--threads",
                         "--nonblocking", "-f", "raw", "-o", f"{args.profile}.raw"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                for kind in kinds:
                    us, statuses = proxy.round(kind, args.requests)
                    want = 503 if kind == "refusal" else 200
                    if statuses != {want: args.requests}:
                        raise SystemExit(f"{proxy.code} {kind}: {statuses}")
                    best[i, kind] = min(best.get((i, kind), us), us)
                    print(f"round {r} {proxy.code} {kind}: {us:.0f} us CPU/request",
                          file=sys.stderr, flush=True)
                    if spy is not None:
                        spy.send_signal(2)
                        spy.wait(30)
                        spy = None
    finally:
        origin.hold.set()
        for proxy in proxies:
            proxy.close()
        origin.shutdown()
    print(f"| checkout | {' | '.join(kinds)} |")
    print("|---|" + "---|" * len(kinds))
    for i, code in enumerate(codes):
        print(f"| {code} | " + " | ".join(f"{best[i, k]:.0f} us" for k in kinds) + " |")
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(60)
    sys.exit(main())
