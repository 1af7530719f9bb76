"""The shared bench's srcset row, alone and paired: one never-seen 4000x3000 JPEG asked for at
the eight fit-in boxes of a responsive ``<img srcset>`` (320x240 .. 1440x1080), in ascending
order, in sequence on one keep-alive connection, as /tmp/mediaproxy-bench/bench.py
``scen_srcset`` does; against this checkout and others (``--code DIR``, e.g. /tmp/main72),
and thumbor for the ratio.

    .venv/bin/python bench/srcset.py --code /tmp/main72              # after / before / thumbor
    .venv/bin/python bench/srcset.py --code /tmp/main72 --rounds 9
    .venv/bin/python bench/srcset.py --code /tmp/main72 --set PROCESSING__THREAD_NICENESS=0

Each proxy is a ``mediaproxy run`` process (default settings, one worker, access log off) on
a free port in front of the shared bench's nginx origin (127.0.0.1:18080); thumbor is the
shared bench's (127.0.0.1:18090, ``/unsafe/fit-in/WxH/127.0.0.1:18080/...``). Every round and
every target gets its own never-seen path (``/media/uploads/b/<nonce>/photo_4000.jpg``), the
targets in turns (the order alternates between rounds). Per srcset: the wall milliseconds of
the eight requests, the CPU milliseconds of the target's processes (user + system from /proc,
thumbor's parent and workers included: much less disturbed by the rest of a shared machine
than the wall clock; thumbor's also counts whatever else asks it meanwhile) and the origin
fetches of the path (nginx's access log). Every output's size is checked (+-1 px). The
medians are reported, and the medians of the rounds' ratios to thumbor and to the first
``--code`` (paired: a round disturbed by the rest of the machine disturbs both).
Loopback only; every loop is bounded (rounds x targets x 8 requests, 120 s timeouts).
"""

from __future__ import annotations

import argparse
import http.client
import io
import statistics
import subprocess
import time
import uuid
from pathlib import Path

from PIL import Image
from proxyproc import free_port, proxy_env, run_command, start as start_process

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "127.0.0.1:18080"
THUMBOR = ("127.0.0.1", 18090)
ORIGIN_LOG = Path("/tmp/mediaproxy-bench/run/nginx/logs/origin_access.log")
SOURCE = "photo_4000.jpg"
SOURCE_SIZE = (4000, 3000)
BOXES = [(320, 240), (480, 360), (640, 480), (800, 600), (960, 720), (1120, 840), (1280, 960),
         (1440, 1080)]


def start(code: Path, settings: dict[str, str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = proxy_env(code, ORIGIN, MONITORING__ACCESS_LOG="false", **settings)
    return start_process(run_command(port), code, env, port)


def fit_in(box: tuple[int, int]) -> tuple[int, int]:
    scale = min(box[0] / SOURCE_SIZE[0], box[1] / SOURCE_SIZE[1], 1.0)
    return round(SOURCE_SIZE[0] * scale), round(SOURCE_SIZE[1] * scale)


def origin_fetches(offset: int, needle: str) -> int | None:
    try:
        with ORIGIN_LOG.open("rb") as f:
            f.seek(offset)
            return sum(needle in line for line in f.read().decode("utf-8", "replace").splitlines())
    except OSError:
        return None


def thumbor_pids() -> list[int]:
    """The shared bench's thumbor processes (its parent and workers), read from /proc."""
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(part.endswith("bin/thumbor") for part in (p.info["cmdline"] or ()))
            and str(THUMBOR[1]) in (p.info["cmdline"] or ())]


def cpu_seconds(processes) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in processes))


def srcset(host: str, port: int, path_of, pids: list[int]) -> dict:
    """One srcset on a fresh connection (opened before the clock starts, as a browser's is):
    wall ms, CPU ms of the ``pids``, origin fetches."""
    import psutil

    nonce = f"d{uuid.uuid4().hex[:12]}"
    src = f"/media/uploads/b/{nonce}/{SOURCE}"
    offset = ORIGIN_LOG.stat().st_size if ORIGIN_LOG.exists() else 0
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.connect()
    processes = [psutil.Process(pid) for pid in pids]
    cpu = cpu_seconds(processes)
    started = time.perf_counter()
    bodies = []
    for box in BOXES:
        conn.request("GET", path_of(src, box))
        response = conn.getresponse()
        bodies.append((box, response.status, response.read()))
    wall = time.perf_counter() - started
    used = cpu_seconds(processes) - cpu if processes else None
    conn.close()
    for box, status, body in bodies:
        assert status == 200, (box, status, body[:200])
        size = Image.open(io.BytesIO(body)).size
        want = fit_in(box)
        assert abs(size[0] - want[0]) <= 1 and abs(size[1] - want[1]) <= 1, (box, size, want)
    time.sleep(0.3)    # let nginx write its access line
    return {"wall": wall * 1000, "cpu": None if used is None else used * 1000,
            "fetches": origin_fetches(offset, src)}


def proxy_path(src: str, box: tuple[int, int]) -> str:
    return f"{src}?w={box[0]}&h={box[1]}&fit=inside&fmt=jpeg"


def thumbor_path(src: str, box: tuple[int, int]) -> str:
    return f"/unsafe/fit-in/{box[0]}x{box[1]}/{ORIGIN}{src}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", action="append", default=[], type=Path,
                        help="another checkout to measure (the 'before'); repeatable")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-thumbor", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION__KEY=VALUE",
                        help="a setting of every proxy, e.g. PROCESSING__THREAD_NICENESS=0 "
                             "(on a machine loaded by other work, nice transform threads "
                             "wait behind it while thumbor's do not); repeatable")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    codes = [ROOT, *args.code]
    procs = {code: start(code, settings) for code in codes}
    targets = [(str(code), "127.0.0.1", port, proxy_path, [proc.pid])
               for code, (proc, port) in procs.items()]
    if not args.no_thumbor:
        targets.append(("thumbor", *THUMBOR, thumbor_path, thumbor_pids()))
    results: dict[str, list[dict]] = {name: [] for name, *_ in targets}
    try:
        for name, host, port, path_of, pids in targets:     # imports, pools, connections
            srcset(host, port, path_of, pids)
        for n in range(args.rounds):
            for name, host, port, path_of, pids in (targets if n % 2 == 0 else targets[::-1]):
                results[name].append(srcset(host, port, path_of, pids))
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)
    medians = {}
    print(f"srcset: {SOURCE} at {len(BOXES)} fit-in boxes {BOXES[0]}..{BOXES[-1]}, "
          f"median of {args.rounds} rounds (never-seen paths)")
    for name, rows in results.items():
        wall = statistics.median(r["wall"] for r in rows)
        cpus = [r["cpu"] for r in rows if r["cpu"] is not None]
        cpu = statistics.median(cpus) if cpus else None
        fetches = sorted({r["fetches"] for r in rows}, key=str)
        medians[name] = (wall, cpu)
        print(f"  {name}: wall {wall:.0f} ms (min {min(r['wall'] for r in rows):.0f})"
              + (f", CPU {cpu:.0f} ms (min {min(cpus):.0f})" if cpu is not None else "")
              + f", origin fetches per srcset {fetches}")
    def paired(a: str, b: str, what: str) -> float:
        """The median of the rounds' ratios (each round measures both: a round disturbed
        by the rest of the machine disturbs both)."""
        return statistics.median(x[what] / y[what] for x, y in zip(results[a], results[b]))

    if "thumbor" in medians:
        for name in results:
            if name != "thumbor":
                print(f"  ratio {name} / thumbor: wall {paired(name, 'thumbor', 'wall'):.2f}"
                      f" (of the medians {medians[name][0] / medians['thumbor'][0]:.2f})"
                      + (f", CPU {paired(name, 'thumbor', 'cpu'):.2f}"
                         if medians["thumbor"][1] else ""))
    if len(codes) > 1:
        a, b = str(codes[0]), str(codes[1])
        print(f"  after / before ({a} / {b}): wall {paired(a, b, 'wall'):.2f}, "
              f"CPU {paired(a, b, 'cpu'):.2f} (medians of the rounds' ratios)")


if __name__ == "__main__":
    main()
