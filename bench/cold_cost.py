"""What a cold transform costs: the proxy process's CPU milliseconds per never-seen URL, against
the shared bench's nginx origin (127.0.0.1:18080), for this checkout and optionally another
(``--code DIR``, e.g. ``--code /tmp/main72``: the before), in paired rounds, with the
breakdown per source and output format; and, for reference, Pillow's own floor for the same
URLs in this process (open, draft, thumbnail, save: what no proxy can go below).

    .venv/bin/python bench/cold_cost.py                          # this checkout
    .venv/bin/python bench/cold_cost.py --code /tmp/main72       # and the before, in turns
    .venv/bin/python bench/cold_cost.py --sources photo_1920.jpg:jpeg --requests 200
    .venv/bin/python bench/cold_cost.py --profile /tmp/cold.txt  # py-spy, this checkout

Every URL is ``/media/uploads/b/<nonce>/<file>?w=<300+i>&h=<200+i>&fit=inside&fmt=<fmt>`` with
a nonce never used before: a source fetch, an estimate, a render and a store each time (the
shared bench's cold set: the corpus files at fit-in sizes, jpeg and webp). One keep-alive
client sends them in turn, so the CPU the proxy spends between two answers belongs to the
request between them (a store finishing after its answer is counted with the next one; the
totals are exact). The figure per checkout is the best round's mean (the least disturbed by the
rest of a shared machine) and the median of the rounds. Each answer's geometry is checked
(+-1 px, like the shared bench). Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import signal
import statistics
import sys
import time
import uuid
from pathlib import Path

from PIL import Image
from proxyproc import free_port, proxy_env, run_command, start as start_process

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = ("127.0.0.1", 18080)
CORPUS = Path(os.environ.get("BENCH_CORPUS", "/tmp/mediaproxy-bench/corpus"))
#: the shared bench's cold set: (source file, output format)
COLD_SET = [("photo_4000.jpg", "jpeg"), ("photo_1920.jpg", "jpeg"), ("photo_1920.jpg", "webp"),
            ("photo_800.jpg", "jpeg"), ("photo_1600.webp", "jpeg"), ("photo_1600.webp", "webp"),
            ("alpha_1200.png", "jpeg"), ("alpha_1200.png", "webp"), ("small.gif", "jpeg")]
PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP"}
#: seconds one round may take at most (a bound, not a target)
ROUND_LIMIT = 300.0


def start(code: Path, profile: str | None = None):
    port = free_port()
    env = proxy_env(code, f"{ORIGIN[0]}:{ORIGIN[1]}")
    cmd = run_command(port)
    if profile and profile.endswith(".pstats"):   # cProfile: the main thread, the reactor
        cmd = [sys.executable, "-m", "cProfile", "-o", profile, *cmd[1:]]
    elif profile:
        spy = Path(sys.executable).with_name("py-spy")
        cmd = [str(spy), "record", "--threads", "-r", "200", "-f", "raw", "-o",
               profile, "--", *cmd]
    return start_process(cmd, code, env, port)


def urls(count: int, cases, sizes: int = 1) -> list[tuple[str, str, str, tuple[int, int]]]:
    """``count`` never-seen URLs over ``cases``, case by case (a block each): (case, path, fmt,
    box); each source path is asked for at ``sizes`` sizes in a row (1: every URL a new
    source; 100: the shared bench's load scenario, whose sources the source cache keeps)."""
    nonce = uuid.uuid4().hex[:12]
    out = []
    per_case = max(1, count // len(cases))
    for c, (name, fmt) in enumerate(cases):
        for i in range(per_case):
            box = (300 + i % 100, 200 + i % 100)
            path = (f"/media/uploads/b/{nonce}-{c}-{i // sizes}/{name}?w={box[0]}&h={box[1]}"
                    f"&fit=inside&fmt={fmt}")
            out.append((f"{name}:{fmt}", path, fmt, box))
    return out


def fit_inside(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    scale = min(box[0] / size[0], box[1] / size[1], 1.0)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def check(body: bytes, fmt: str, name: str, box) -> None:
    with Image.open(CORPUS / name) as src:
        want = fit_inside(src.size, box)
    with Image.open(io.BytesIO(body)) as out:
        got_fmt, got = out.format, out.size
    if got_fmt != PIL_FORMAT[fmt] or abs(got[0] - want[0]) > 1 or abs(got[1] - want[1]) > 1:
        raise SystemExit(f"{name} {box} {fmt}: got {got_fmt} {got}, want {want}")


def reactor_cpu(process) -> float:
    """CPU seconds of the process's main thread (the reactor's)."""
    for thread in process.threads():
        if thread.id == process.pid:
            return thread.user_time + thread.system_time
    return 0.0


def round_(proc, port: int, work) -> dict[str, list[float]]:
    """CPU ms of the proxy per request, by case (the CPU of each case's block over its count:
    the process's CPU times tick in 10 ms)."""
    import psutil

    process = psutil.Process(proc.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    per: dict[str, list[float]] = {}
    deadline = time.monotonic() + ROUND_LIMIT
    blocks: dict[str, list] = {}
    for item in work:
        blocks.setdefault(item[0], []).append(item)
    for case, block in blocks.items():
        bodies = []
        reactor_before = reactor_cpu(process)
        before = process.cpu_times()
        for _, path, fmt, box in block:
            if time.monotonic() > deadline:
                raise SystemExit("a round took longer than its bound")
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise SystemExit(f"{path}: {response.status} {body[:200]!r}")
            bodies.append((body, fmt, box))
        after = process.cpu_times()
        used = ((after.user - before.user) + (after.system - before.system)) * 1000
        per[case] = [used / len(block)] * len(block)
        per["reactor " + case] = [(reactor_cpu(process) - reactor_before) * 1000 / len(block)]
        for body, fmt, box in bodies:
            check(body, fmt, case.split(":")[0], box)
    conn.close()
    return per


def pillow_floor(work, quality: int = 80) -> dict[str, float]:
    """CPU ms per URL of Pillow alone in this process: open, draft, thumbnail, save."""
    sources = {name: (CORPUS / name).read_bytes() for name in {w[0].split(":")[0] for w in work}}
    per: dict[str, list[float]] = {}
    for case, _, fmt, box in work:
        name = case.split(":")[0]
        started = time.process_time()
        with Image.open(io.BytesIO(sources[name])) as im:
            if im.format == "JPEG":
                im.draft("RGB", box)
            im.thumbnail(box)
            if fmt == "jpeg" and im.mode not in ("RGB", "L"):
                im = im.convert("RGB")
            out = io.BytesIO()
            im.save(out, PIL_FORMAT[fmt], quality=quality)
        per.setdefault(case, []).append((time.process_time() - started) * 1000)
    return {case: statistics.mean(v) for case, v in per.items()}


#: leaf frames of a thread waiting, not working (py-spy's idle detection misses some)
IDLE = ("Condition.wait", "EPollReactor.doPoll (epollreactor.py:227)", "Queue.get")


def summarize(profile: Path, top: int = 15) -> None:
    """The top entries of a py-spy raw profile: CPU samples by function (self and inclusive),
    by thread kind (the reactor or the pool), startup imports and idle waits left out."""
    import collections
    import re

    own, inclusive, threads = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r" \(([^:]*/)?", " (", f) for f in stack.split(";")[1:]]
        if not frames or frames[-1].startswith(IDLE) or any("importlib" in f for f in frames):
            continue
        kind = "reactor" if "MainThread" in stack.split(";")[0] else "pool"
        n = int(count)
        total += n
        threads[kind] += n
        own[kind, frames[-1]] += n
        for frame in set(frames):
            inclusive[kind, frame] += n
    print(f"{total} busy samples: " + ", ".join(f"{k} {100 * n / total:.0f} %"
                                                 for k, n in threads.most_common()))
    print("self:")
    for (kind, frame), n in own.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {kind:7} {frame}")
    print("inclusive (the reactor's and the pool's entry points left out):")
    shown = 0
    for (kind, frame), n in inclusive.most_common():
        if n >= 0.9 * threads[kind] or shown >= top:
            continue
        print(f"  {100 * n / total:5.1f} %  {kind:7} {frame}")
        shown += 1


def parse_cases(text: str | None):
    if not text:
        return COLD_SET
    return [tuple(item.split(":")) for item in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", action="append", default=[], type=Path,
                        help="another checkout to measure in turns (the before)")
    parser.add_argument("--requests", type=int, default=90, help="URLs per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sources", help="FILE:FMT,... (default: the shared cold set)")
    parser.add_argument("--sizes-per-source", type=int, default=1,
                        help="sizes asked of each never-seen source path (100: like the shared "
                        "bench's load scenario)")
    parser.add_argument("--profile", help="run this checkout (or the first --code) once under "
                        "py-spy (raw folded stacks to this file; or, for a name ending in "
                        ".pstats, cProfile of the reactor's thread), print its top entries, "
                        "stop")
    args = parser.parse_args()
    cases = parse_cases(args.sources)
    if args.profile:
        proc, port = start(args.code[0] if args.code else ROOT, args.profile)
        try:
            round_(proc, port, urls(10, cases))
            round_(proc, port, urls(args.requests, cases, args.sizes_per_source))
        finally:
            # py-spy writes its profile on SIGINT; the reactor stops on SIGTERM (and cProfile
            # writes its own once the proxy's main returns)
            proc.send_signal(signal.SIGTERM if args.profile.endswith(".pstats")
                             else signal.SIGINT)
            proc.wait(120)
        if args.profile.endswith(".pstats"):
            import pstats
            pstats.Stats(args.profile).sort_stats("tottime").print_stats(30)
            pstats.Stats(args.profile).sort_stats("cumulative").print_stats(60)
        else:
            print(f"py-spy profile in {args.profile}")
            summarize(Path(args.profile))
        return
    codes = [ROOT, *args.code]
    procs = {code: start(code) for code in codes}
    try:
        for proc, port in procs.values():
            round_(proc, port, urls(2 * len(cases), cases))   # imports, pools, warm-up
        rounds: dict[Path, list[dict[str, list[float]]]] = {code: [] for code in codes}
        for n in range(args.rounds):
            for code in (codes if n % 2 == 0 else codes[::-1]):
                proc, port = procs[code]
                work = urls(args.requests, cases, args.sizes_per_source)
                rounds[code].append(round_(proc, port, work))
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            proc.wait(60)
    floors = [pillow_floor(urls(args.requests, cases, args.sizes_per_source)) for _ in range(3)]
    floor = {case: min(f[case] for f in floors) for case in floors[0]}   # the best of 3
    names = [f"{n}:{f}" for n, f in cases]
    width = max(len(n) for n in names) + 2
    header = "".join(f"{str(c)[-18:]:>20}" for c in codes)
    print(f"CPU ms per cold transform (best round's mean; median of {args.rounds} rounds)")
    print(f"{'case':<{width}}{header}{'Pillow floor':>16}")
    for case in names:
        cells = ""
        for code in codes:
            means = [statistics.mean(r[case]) for r in rounds[code] if case in r]
            cells += f"{min(means):>11.2f} ({statistics.median(means):5.2f})"
        print(f"{case:<{width}}{cells}{floor.get(case, float('nan')):>16.2f}")
    cells = ""
    for code in codes:
        means = [statistics.mean([statistics.mean(r[c]) for c in names]) for r in rounds[code]]
        cells += f"{min(means):>11.2f} ({statistics.median(means):5.2f})"
    print(f"{'all (mean)':<{width}}{cells}")
    cells = ""
    for code in codes:
        means = [statistics.mean([r["reactor " + c][0] for c in names]) for r in rounds[code]]
        cells += f"{min(means):>11.2f} ({statistics.median(means):5.2f})"
    print(f"{'of which the reactor':<{width}}{cells}")
    print(f"Pillow floor, mean of the cases: {statistics.mean(floor[c] for c in names):.2f}")


if __name__ == "__main__":
    main()
