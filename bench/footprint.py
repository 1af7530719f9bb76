"""A proxy's memory footprint, as the shared bench counts it and as the machine pays it.

    .venv/bin/python bench/footprint.py                    # start RSS/PSS of each process
    .venv/bin/python bench/footprint.py --imports          # ... and what the imports cost
    .venv/bin/python bench/footprint.py --load             # ... and the bench's cold load
    .venv/bin/python bench/footprint.py --code /tmp/main72 --load   # another checkout too
    .venv/bin/python bench/footprint.py --load --breakdown # ... and what the caches hold after
    .venv/bin/python bench/footprint.py --load --set PROCESSING__DECODED_CACHE_BYTES=24MiB
    MEDIAPROXY_SERVER__WORKERS=1 .venv/bin/python bench/footprint.py   # one process

Each checkout's ``mediaproxy run`` starts on a free loopback port (never 8080) in front of the
shared bench's nginx origin (127.0.0.1:18080) with its defaults (``server.workers = "auto"``
unless ``MEDIAPROXY_SERVER__WORKERS`` says otherwise), idles 3 s, and every process of its tree
is read from ``/proc/PID/smaps_rollup``: RSS (what the bench sums) and PSS (each shared page
divided among the processes that map it: what the machine pays).

``--load`` then runs the shared bench's own driver (``$BENCH_WORK/bench.py``, default
/tmp/mediaproxy-bench) against that port with scenarios ``cold,hot,load`` (the order of a full
run; the floor and ceiling references skipped), sampling the same process tree through a pid
file, and prints each phase's peak RSS and PSS summed over the tree: the "cold load: peak RSS"
row of issue 14's table is the ``load`` phase's. ``--imports`` prints the RSS each group of
imports adds to a bare Python, in the order a worker imports them (one fresh interpreter).
``--breakdown`` also runs the monitoring listener (a free loopback port) and prints, after the
load, what the caches hold summed over the workers (``mediaproxy_cache_bytes`` per layer,
``mediaproxy_decoded_cache_bytes``): the part of the growth that is budgeted cache, the rest
being the heap (malloc's arenas, Python's objects).

What the bench's sum counts: psutil's ``rss`` of every process, so a page two processes share
(the interpreter and library code, and after a ``fork`` every page neither has written since)
counts once per process. A forked worker would lower the PSS sum, not the RSS sum.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxyproc import free_port, run_command, start, stop

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(os.environ.get("BENCH_WORK", "/tmp/mediaproxy-bench"))
ORIGIN = "127.0.0.1:18080"

#: Import groups in a worker's order: (label, modules).
IMPORT_GROUPS = [
    ("attrs, zope.interface, pluggy", "attrs,zope.interface,pluggy"),
    ("Twisted core (failure, logger, defer)",
     "twisted.python.failure,twisted.logger,twisted.internet.defer"),
    ("the reactor (tcp -> _newtls -> pyOpenSSL, cryptography)",
     "twisted.internet.epollreactor,twisted.internet.reactor"),
    ("twisted.web, endpoints, application",
     "twisted.web.server,twisted.web.resource,twisted.internet.endpoints,"
     "twisted.application.service"),
    ("Pillow (JPEG, PNG, WebP)", "PIL.Image,PIL.JpegImagePlugin,PIL.PngImagePlugin,"
                                 "PIL.WebPImagePlugin"),
    ("prometheus_client", "prometheus_client"),
    ("psutil, txredisapi, cachetools", "psutil,txredisapi,cachetools"),
    ("mediaproxy.config, models", "mediaproxy.config,mediaproxy.models"),
    ("the rest of mediaproxy (tap, worker, cli)", "mediaproxy.tap,mediaproxy.worker,mediaproxy.cli"),
]

_IMPORTS = r"""
import importlib, json, sys
def roll():
    d = {}
    for line in open("/proc/self/smaps_rollup"):
        p = line.split()
        if p[0] in ("Rss:", "Pss:"):
            d[p[0][:-1]] = int(p[1]) / 1024
    return d
out = [("python", roll())]
for label, modules in json.loads(sys.argv[1]):
    for m in modules.split(","):
        importlib.import_module(m)
    out.append((label, roll()))
print(json.dumps(out))
"""

_TLS = r"""
import sys
if sys.argv[1] == "without":
    sys.modules["OpenSSL"] = None   # measuring only: Twisted then builds no TLS support
from twisted.internet import reactor
import twisted.web.server, twisted.internet.endpoints
rss = [int(l.split()[1]) for l in open("/proc/self/smaps_rollup") if l.startswith("Rss:")][0]
print(rss / 1024)
"""


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def rollup(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MiB."""
    d = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            p = line.split()
            if p[0] in ("Rss:", "Pss:"):
                d[p[0]] = int(p[1]) / 1024
    return d["Rss:"], d["Pss:"]


def environment(code: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MEDIAPROXY_") or k == "MEDIAPROXY_SERVER__WORKERS"}
    env.update({"MEDIAPROXY_BACKEND__URL": f"http://{ORIGIN}",
                "MEDIAPROXY_MONITORING__LOG_LEVEL": "warn", "PYTHONPATH": str(code),
                "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def heap_kinds(pid: int) -> dict[str, float]:
    """RSS of ``pid``'s anonymous memory by kind, in MiB, from ``/proc/PID/smaps``: glibc's
    main heap (``[heap]``, the reactor thread's allocations), the threads' arenas (glibc maps
    each in 64 MiB-aligned reservations), 1 MiB maps (CPython's object arenas), and the other
    anonymous maps (large allocations mmapped on their own, thread stacks); file-backed pages
    (code, libraries) as one more."""
    out: dict[str, float] = {}
    kind = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                size, path = end - start, (fields[5] if len(fields) > 5 else "")
                if path == "[heap]":
                    kind = "main heap ([heap])"
                elif path.startswith("/"):
                    kind = "files (code, libraries)"
                elif path:
                    kind = "other (" + path + ")"
                elif size == 1 << 20:
                    kind = "1 MiB maps (Python objects)"
                elif start % (64 << 20) == 0 or size >= (60 << 20):
                    kind = "thread arenas (64 MiB reservations)"
                else:
                    kind = "other anonymous maps"
            elif fields[0] == "Rss:" and kind:
                out[kind] = out.get(kind, 0.0) + int(fields[1]) / 1024
    return out


def cache_gauges(port: int) -> dict[str, float]:
    """The memory held by the caches, from the merged ``/metrics`` on ``port``: bytes by name."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("mediaproxy_cache_bytes{", "mediaproxy_decoded_cache_bytes ",
                            "mediaproxy_decoded_cache_capacity_bytes ")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def run_load(port: int, pid: int, out_dir: Path) -> dict:
    """The shared bench's cold, hot and load scenarios against 127.0.0.1:``port``; each phase's
    peak RSS and PSS summed over ``pid``'s tree."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pidfile = out_dir / f"pid-{port}"
    pidfile.write_text(str(pid))
    target = out_dir / f"target-{port}.conf"
    target.write_text(f"url: http://127.0.0.1:{port}/media/uploads/{{src}}?w={{w}}&h={{h}}"
                      f"&fit=inside&fmt={{fmt}}\nscenarios: cold,hot,load\npidfile: {pidfile}\n")
    before = set(glob.glob(str(out_dir / "*-mediaproxy.json")))
    subprocess.run([sys.executable, str(BENCH / "bench.py"), "mediaproxy", str(target),
                    "--scenarios", "cold,hot,load", "--no-floor", "--no-ceiling",
                    "--out-dir", str(out_dir), "--n", "5"],
                   cwd=BENCH, capture_output=True, text=True, timeout=600, check=True)
    new = sorted(set(glob.glob(str(out_dir / "*-mediaproxy.json"))) - before,
                 key=os.path.getmtime)
    scenarios = json.loads(Path(new[-1]).read_text())["scenarios"]
    return {name: scenarios[name].get("rss", {}) for name in ("cold", "load")
            if name in scenarios} | {"load_per_s": scenarios.get("load", {}).get("ok_per_s")}


def measure(code: Path, load: bool, out_dir: Path, breakdown: bool = False,
            settings: dict[str, str] | None = None) -> None:
    port = free_port()
    env = environment(code)
    env.update({f"MEDIAPROXY_{key}": value for key, value in (settings or {}).items()})
    monitoring = free_port() if breakdown else None
    if monitoring:
        env["MEDIAPROXY_MONITORING__LISTEN"] = f"tcp:{monitoring}:interface=127.0.0.1"
    proc, _ = start(run_command(port), code, env, port)
    try:
        time.sleep(3)
        procs = [(p, *rollup(p)) for p in tree(proc.pid)]
        print(f"{code}: {len(procs)} process(es) at start")
        for pid, rss, pss in procs:
            print(f"  pid {pid}: RSS {rss:.1f} MiB, PSS {pss:.1f} MiB")
        print(f"  sum: RSS {sum(r for _, r, _ in procs):.1f} MiB, "
              f"PSS {sum(p for _, _, p in procs):.1f} MiB")
        if breakdown:
            kinds: dict[str, float] = {}
            for pid, _, _ in procs:
                for kind, mib in heap_kinds(pid).items():
                    kinds[kind] = kinds.get(kind, 0.0) + mib
            print("  at start, RSS by kind: " + ", ".join(
                f"{kind} {mib:.1f}" for kind, mib in sorted(kinds.items(), key=lambda kv: -kv[1])))
        if load:
            figures = run_load(port, proc.pid, out_dir)
            for phase in ("cold", "load"):
                rss = figures.get(phase, {})
                print(f"  {phase} phase: peak RSS {rss.get('peak_rss_mib')} MiB, peak PSS "
                      f"{rss.get('peak_pss_mib')} MiB, largest process "
                      f"{rss.get('peak_single_rss_mib')} MiB, {rss.get('max_procs')} processes")
            print(f"  load: {figures.get('load_per_s')} transforms/s")
            if monitoring:
                procs = [(p, *rollup(p)) for p in tree(proc.pid)]
                print(f"  after the load: RSS {sum(r for _, r, _ in procs):.1f} MiB, PSS "
                      f"{sum(p for _, _, p in procs):.1f} MiB; the caches hold (all workers):")
                for name, value in cache_gauges(monitoring).items():
                    print(f"    {name} {value / 2**20:.1f} MiB")
                print("  RSS by kind of memory (all processes):")
                kinds: dict[str, float] = {}
                for pid, _, _ in procs:
                    for kind, mib in heap_kinds(pid).items():
                        kinds[kind] = kinds.get(kind, 0.0) + mib
                for kind, mib in sorted(kinds.items(), key=lambda kv: -kv[1]):
                    print(f"    {mib:6.1f} MiB  {kind}")
    finally:
        stop(proc)


def imports(code: Path) -> None:
    groups = json.dumps(IMPORT_GROUPS)
    out = subprocess.run([sys.executable, "-c", _IMPORTS, groups], env=environment(code),
                         capture_output=True, text=True, check=True, cwd=code).stdout
    rows = json.loads(out)
    print(f"{code}: RSS added by each group of imports (one fresh interpreter, in this order)")
    previous = None
    for label, d in rows:
        added = "" if previous is None else f"+{d['Rss'] - previous:5.1f}"
        print(f"  {added:>6} MiB  -> RSS {d['Rss']:5.1f}, PSS {d['Pss']:5.1f}  {label}")
        previous = d["Rss"]
    tls = {}
    for how in ("with", "without"):
        tls[how] = float(subprocess.run(
            [sys.executable, "-c", _TLS, how], env=environment(code), capture_output=True,
            text=True, check=True, cwd=code).stdout)
    print(f"  Twisted's reactor and web with its TLS support {tls['with']:.1f} MiB RSS, "
          f"without (pyOpenSSL hidden) {tls['without']:.1f}: TLS is "
          f"{tls['with'] - tls['without']:.1f} MiB a process")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--code", action="append", default=[], type=Path,
                        help="another checkout to measure after this one")
    parser.add_argument("--load", action="store_true",
                        help="run the shared bench's cold, hot and load scenarios")
    parser.add_argument("--imports", action="store_true")
    parser.add_argument("--breakdown", action="store_true",
                        help="after the load, what the caches hold (monitoring listener)")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/footprint-results"))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION__KEY=VALUE",
                        help="a setting of every proxy measured; repeatable")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    for code in [ROOT, *args.code]:
        if args.imports:
            imports(code)
        measure(code, args.load, args.out_dir, args.breakdown, settings)


if __name__ == "__main__":
    main()
