"""The overload run (issue 14, "Must deliver" 5): four times the sustainable cold rate for 30 s
against one proxy, with cache hits requested throughout; what is shed, how fast the hits stay,
the RSS against the budget, and how soon service is back.

    .venv/bin/python bench/overload.py                         # this checkout, defaults
    .venv/bin/python bench/overload.py --code /tmp/main72      # another checkout
    .venv/bin/python bench/overload.py --seconds 10 --json /tmp/overload.json
    .venv/bin/python bench/overload.py --set PROCESSING__QUEUE_TIMEOUT=1   # any setting

It starts ``python -m mediaproxy run`` from ``--code`` (PYTHONPATH, this interpreter) on a free
loopback port (never 8080) in front of the shared bench's nginx origin on 127.0.0.1:18080
(``/tmp/mediaproxy-bench/peers.sh start``), with its monitoring and admin listeners on free
loopback ports too (to read the budget and the shed counters), then:

1. **warm**: three hit URLs are requested until cached; the solo latency of a cold request
   (never-seen source, photo_1920.jpg) is measured sequentially: the *normal* cold latency.
2. **baseline**: ``--baseline`` s of hits alone (the hit prober, a separate process so the
   load generator's own CPU does not delay it, sends ``--hit-rate`` GETs/s on one keep-alive
   connection from here to the end).
3. **calibrate**: the sustainable cold rate, closed loop: ``--conns`` clients each asking for
   never-seen sources (``/media/uploads/b/<nonce>/<file>?w=..&h=..&fit=inside&fmt=jpeg``, the
   shared bench's COLD_SET files in turn, every URL unique) for ``--calibrate`` s:
   transforms/s = 200 answers / s.
4. **overload**: an open-loop load of ``--factor`` (4) times that rate of the same kind of
   never-seen URLs for ``--seconds`` (30): request i is sent at start + i / rate whatever
   happened to the others (a fixed arrival schedule), at most ``--max-outstanding`` at once
   (a request due while that many are out is counted as not sent), each with a ``--timeout``.
5. **recovery**: from the load's end, a sequential never-seen cold request every
   ``--probe-interval`` s until one is answered 200 within its normal latency (``--normal``
   times the solo median), for at most ``--recovery`` s; then ``--after`` s more of hits.

All along a sampler thread reads the proxy's RSS (the process and its children, psutil) and
CPU every 0.5 s. The report: statuses of the overload's cold requests (200 / 503 / 429 / other,
and how many 503/429 had a Retry-After), the accepted ones' p50/p99 latency, the sources
fetched for them and how many of those were not served (fetched, then shed or timed out:
wasted work, read from the proxy's ``mediaproxy_backend_responses_total``), hit latency
p50/p99/max before, during and after the overload (and the ratios), peak RSS against the
budget (idle RSS + transform memory capacity + memory cache + source cache, read from the
proxy's /metrics and /admin/config), and the recovery time. ``--json PATH`` writes everything.

Each requirement is checked (exit status 1 when one fails): every 503/429 has a Retry-After and
nothing else failed; the accepted p99 is at most ``processing.queue_timeout`` + the
calibration's p99; the hits' p99 during the overload is at most ``--max-hit-p99-ms`` (50) with
none failing; the peak RSS is under the budget; a cold request is served within its normal
latency at most ``--max-recovery`` (1) s after the load's end. ``--profile PREFIX`` records
py-spy stacks of the baseline and the overload; ``--summarise FILE...`` says where the
reactor thread's samples went (idle in epoll, in a socket call, i.e. waiting for the GIL, or
running Python) and the transform threads' busiest frames.

Per phase the hits' table also gives the share of the time the proxy's reactor threads (each
process's main thread) were on a core and runnable but waiting for one (the kernel's
``/proc/PID/schedstat``): on a shared machine a hit waits with its reactor. ``--send-times``
loads ``bench/sendtime/sitecustomize.py`` into the proxy (measurement only) and reports, per
phase, the hits' time from ``Request.finish()`` to their last byte handed to the kernel (wall,
and the reactor's CPU in between: the other work they waited for).

Loopback only; every loop is bounded in count and time; the proxy is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ORIGIN = "http://127.0.0.1:18080"
FORBIDDEN_PORT = 8080   # the lead's benchmark port
#: the shared bench's cold sources (bench.py COLD_SET), in the order they are requested
COLD_FILES = ["photo_4000.jpg", "photo_1920.jpg", "photo_800.jpg", "photo_1600.webp",
              "alpha_1200.png", "small.gif"]
PROBE_FILE = "photo_1920.jpg"
HIT_URLS = ["/media/uploads/photo_1920.jpg?w=300&h=200&fit=inside&fmt=jpeg",
            "/media/uploads/photo_800.jpg?w=200&h=150&fit=inside&fmt=webp",
            "/media/uploads/alpha_1200.png?w=320&h=320&fit=inside&fmt=jpeg"]
MiB = 1024 * 1024


# --------------------------------------------------------------------------- small helpers

def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port != FORBIDDEN_PORT:
            return port


def pct(values, p):
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 1)


def ratio(a, b):
    return None if a is None or not b else round(a / b, 2)


class ColdUrls:
    """Never-seen URLs: a fresh source path per request, the cold files in turn, the box
    growing by one pixel in both sides (so no two outputs are alike)."""

    def __init__(self, runid: str):
        self.runid = runid
        self.n = 0

    def next(self, tag: str, file: str | None = None) -> str:
        i = self.n
        self.n += 1
        name = file or COLD_FILES[i % len(COLD_FILES)]
        w, h = 300 + i % 100, 200 + i % 100
        return (f"/media/uploads/b/{tag}{self.runid}-{i}/{name}"
                f"?w={w}&h={h}&fit=inside&fmt=jpeg")


# --------------------------------------------------------------------------- the HTTP client

async def get(port: int, path: str, timeout: float) -> dict:
    """One GET on a new connection (Connection: close), bounded by ``timeout``: status (or
    "timeout" / "error"), latency to the last body byte, Retry-After, the JSON error code."""
    started = time.monotonic()
    out = {"t": started, "status": "error", "retry_after": None, "error": None}
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
                         f"User-Agent: overload-bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            else:
                body = await reader.read()
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = dechunk(body)
            out["status"] = status
            out["retry_after"] = headers.get("retry-after")
            out["bytes"] = len(body)
            if status >= 400:
                try:
                    out["error"] = json.loads(body).get("error")
                except (ValueError, AttributeError):
                    out["error"] = "not-json"
    except TimeoutError:
        out["status"] = "timeout"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
            IndexError) as e:
        out["status"] = "error"
        out["error"] = type(e).__name__
    finally:
        if writer is not None:
            writer.close()
    out["s"] = time.monotonic() - started
    return out


def dechunk(raw: bytes) -> bytes:
    body, rest = b"", raw
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2:]
    return body


# --------------------------------------------------------------------------- hit prober

def hit_prober(port: int, urls: list[str], rate: float, limit: float, stop, out) -> None:
    """A separate process: GETs of cached URLs at ``rate`` per second on one keep-alive
    connection until ``stop`` is set (at most ``limit`` seconds); sends its samples
    (monotonic send time, seconds, status, X-Cache, seconds the prober itself waited for a
    core during the request) through ``out`` at the end. The last is the kernel's
    ``/proc/thread-self/schedstat`` (runnable, not running): on this machine the prober shares
    the cores with the proxy and the load, and a hit's answer that has arrived waits in its
    socket until the prober gets a core; a client on another machine does not wait so."""
    samples = []

    def waited() -> float:
        try:
            with open("/proc/thread-self/schedstat") as f:
                return int(f.read().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    conn = None
    started = time.monotonic()
    i = 0
    while not stop.is_set() and time.monotonic() - started < limit:
        due = started + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        path = urls[i % len(urls)]
        i += 1
        w, t = waited(), time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            samples.append((t, time.monotonic() - t, response.status,
                            response.getheader("X-Cache"), waited() - w))
        except (OSError, http.client.HTTPException) as e:
            samples.append((t, time.monotonic() - t, type(e).__name__, None, waited() - w))
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    out.put(samples)


# --------------------------------------------------------------------------- sampler

class Sampler(threading.Thread):
    """RSS (sum over the process and its descendants) and CPU seconds every ``interval``."""

    def __init__(self, pid: int, interval: float = 0.5, scrape=None):
        super().__init__(daemon=True)
        self.scrape = scrape          # () -> Prometheus text, for the reactor lag
        self.lags: list[tuple[float, float]] = []   # (monotonic, worst lag of the last 5 s)
        import psutil
        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []   # (monotonic, rss bytes, cpu s)
        #: (monotonic, {pid: (s on a core, s waiting for a core)}) of every process's main
        #: thread, its reactor: /proc/PID/schedstat
        self.reactors: list[tuple[float, dict[int, tuple[float, float]]]] = []
        self.stopped = threading.Event()
        self._cpu_dead = 0.0
        self._known: dict[int, object] = {}
        self._last_cpu: dict[int, float] = {}

    def read(self) -> tuple[int, float]:
        procs = [self.root]
        try:
            procs += self.root.children(recursive=True)
        except self.psutil.Error:
            pass
        rss, seen = 0, {}
        reactors = {}
        for p in procs:
            try:
                with open(f"/proc/{p.pid}/schedstat") as f:
                    on_cpu, waiting = f.read().split()[:2]
                reactors[p.pid] = (int(on_cpu) / 1e9, int(waiting) / 1e9)
            except (OSError, ValueError):
                pass
            try:
                with p.oneshot():
                    mem = p.memory_info().rss
                    times = p.cpu_times()
            except self.psutil.Error:
                continue
            rss += mem
            seen[p.pid] = times.user + times.system
        for pid, last in self._last_cpu.items():   # CPU of children gone since
            if pid not in seen:
                self._cpu_dead += last
        self._last_cpu = seen
        self.reactors.append((time.monotonic(), reactors))
        return rss, self._cpu_dead + sum(seen.values())

    def run(self) -> None:
        n = 0
        while not self.stopped.is_set():
            rss, cpu = self.read()
            self.samples.append((time.monotonic(), rss, cpu))
            if self.scrape is not None and n % 5 == 0:   # the probe keeps the worst of 5 s
                lag = metric_values(self.scrape(), "mediaproxy_reactor_lag_seconds").get("")
                if lag is not None:
                    self.lags.append((time.monotonic(), lag))
            n += 1
            self.stopped.wait(self.interval)

    def between(self, start: float, end: float) -> dict:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return {"peak_rss_mib": None, "cpu_pct": None, "samples": 0, "cpu_s": None,
                    "reactor_lag_max_ms": None, "reactor_on_cpu_pct": None,
                    "reactor_runq_pct": None}
        before = [s for s in self.samples if s[0] <= start] or inside[:1]
        first, last = before[-1], inside[-1]
        span = last[0] - first[0]
        lags = [lag for t, lag in self.lags if start <= t <= end + 5.0]
        return {**self.reactor_time(start, end),
                "peak_rss_mib": round(max(s[1] for s in inside) / MiB, 1),
                "reactor_lag_max_ms": ms(max(lags)) if lags else None,
                "cpu_pct": round(100 * (last[2] - first[2]) / span) if span > 0 else None,
                "cpu_s": round(last[2] - first[2], 2), "samples": len(inside)}


    def reactor_time(self, start: float, end: float) -> dict:
        """Where the proxy's reactor threads (each process's main thread) spent ``start`` to
        ``end``, in percent of the time, averaged over the processes (the kernel's schedstat):
        on a core, runnable but waiting for a core, and the rest (asleep in epoll, or waiting
        for the GIL). A hit that arrives while the reactor waits for a core waits with it."""
        inside = [r for r in self.reactors if start <= r[0] <= end]
        before = [r for r in self.reactors if r[0] <= start] or inside[:1]
        if not inside or inside[-1][0] <= before[-1][0]:
            return {"reactor_on_cpu_pct": None, "reactor_runq_pct": None}
        (t0, first), (t1, last) = before[-1], inside[-1]
        pids = [pid for pid in last if pid in first]
        if not pids:
            return {"reactor_on_cpu_pct": None, "reactor_runq_pct": None}
        span = (t1 - t0) * len(pids)
        on_cpu = sum(last[p][0] - first[p][0] for p in pids)
        waiting = sum(last[p][1] - first[p][1] for p in pids)
        return {"reactor_on_cpu_pct": round(100 * on_cpu / span, 1),
                "reactor_runq_pct": round(100 * waiting / span, 1)}


# --------------------------------------------------------------------------- the proxy

class Proxy:
    def __init__(self, code: Path, python: str, settings: dict[str, str], log: Path,
                 send_times: Path | None = None):
        self.port, self.monitoring, self.admin = free_port(), free_port(), free_port()
        self.token = secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
        env.update({
            "PYTHONPATH": str(code),
            "MEDIAPROXY_BACKEND__URL": ORIGIN,
            "MEDIAPROXY_MONITORING__LOG_LEVEL": "warn",
            "MEDIAPROXY_MONITORING__LISTEN": f"tcp:{self.monitoring}:interface={HOST}",
            "MEDIAPROXY_ADMIN__LISTEN": f"tcp:{self.admin}:interface={HOST}",
            "MEDIAPROXY_ADMIN__TOKEN": self.token,
            "MEDIAPROXY_CACHE__X_CACHE_HEADER": "true",
        })
        env.update({f"MEDIAPROXY_{k}": v for k, v in settings.items()})
        if send_times is not None:   # bench/sendtime/sitecustomize.py times the hits' sends
            env["PYTHONPATH"] += os.pathsep + str(ROOT / "bench" / "sendtime")
            env["OVERLOAD_SEND_TIMES"] = str(send_times)
        self.log = log
        self.proc = subprocess.Popen(
            [python, "-m", "mediaproxy", "run", "--listen", f"tcp:{self.port}:interface={HOST}"],
            cwd=code, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the proxy exited at start:\n{log.read_text()[-3000:]}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("the proxy did not start within 60 s")

    def scrape(self) -> str:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.monitoring}/metrics",
                                        timeout=10) as r:
                return r.read().decode()
        except OSError:
            return ""

    def config(self) -> dict:
        req = urllib.request.Request(f"http://{HOST}:{self.admin}/admin/config",
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())["config"]
        except (OSError, ValueError, KeyError):
            return {}

    def stop(self) -> None:
        import psutil
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for child in children:   # workers that outlived their parent: by their own pid
            try:
                child.kill()
            except psutil.Error:
                pass


def source_fetches(proxy: Proxy) -> int:
    """Source fetches the proxy made so far (answered or not): every worker's
    ``mediaproxy_backend_responses_total{purpose="source"}``."""
    counts = metric_values(proxy.scrape(), "mediaproxy_backend_responses_total")
    return int(sum(v for labels, v in counts.items() if 'purpose="source"' in labels))


def metric_values(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one series in a Prometheus scrape, summed over equal labels."""
    out: dict[str, float] = {}
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)$", text, re.M):
        out[m.group(1) or ""] = out.get(m.group(1) or "", 0.0) + float(m.group(2))
    return out


# --------------------------------------------------------------------------- the phases

async def sequential(port, urls: ColdUrls, tag, count, timeout, file=None):
    return [await get(port, urls.next(tag, file), timeout) for _ in range(count)]


async def closed_loop(port, urls: ColdUrls, conns: int, seconds: float, timeout: float):
    end = time.monotonic() + seconds
    answers: list[dict] = []

    async def client():
        while time.monotonic() < end:
            answers.append(await get(port, urls.next("c"), timeout))

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(conns)))
    return answers, time.monotonic() - started


async def open_loop(port, urls: ColdUrls, rate: float, seconds: float, outstanding: int,
                    timeout: float):
    """Request i at start + i / rate, at most ``outstanding`` out at once; returns the
    answers, the number not sent (too many out), and the load's end (monotonic)."""
    answers: list[dict] = []
    tasks: set = set()
    not_sent = 0
    start = time.monotonic()
    total = int(rate * seconds)

    async def one(path):
        answers.append(await get(port, path, timeout))

    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= outstanding:
            not_sent += 1
            continue
        task = asyncio.create_task(one(urls.next("o")))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    delay = start + seconds - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    return answers, not_sent, time.monotonic(), tasks


async def recovery(port, urls: ColdUrls, load_end: float, normal: float, interval: float,
                   limit: float, timeout: float):
    """Sequential never-seen cold requests from the load's end until one is 200 within
    ``normal`` seconds (at most ``limit`` s)."""
    probes = []
    while time.monotonic() - load_end < limit:
        sent = time.monotonic()
        got = await get(port, urls.next("r", PROBE_FILE), timeout)
        got["since_end"] = time.monotonic() - load_end
        probes.append(got)
        if got["status"] == 200 and got["s"] <= normal:
            return probes, got["since_end"]
        delay = sent + interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    return probes, None


def profile(args, pid: int, log, phase: str, seconds: float):
    """py-spy (``--profile PREFIX``): raw stacks of every thread of the proxy, idle ones too,
    during the baseline (PREFIX.baseline.raw) and the overload's first half
    (PREFIX.overload.raw): what the reactor thread does while hits slow down. Summarise with
    ``--summarise FILE``."""
    if not args.profile:
        return None
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        log("no py-spy next to this interpreter (pip install py-spy): no profile")
        return None
    seconds = max(1, int(seconds))
    out = f"{args.profile}.{phase}.raw"
    log(f"py-spy: {seconds} s of the {phase}'s stacks -> {out}")
    return subprocess.Popen(
        [str(spy), "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "--threads",
         "--idle", "--nonblocking", "-f", "raw", "-o", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: the reactor thread's leaf frames that are a socket call: the call itself takes microseconds
#: on loopback; a sample there is (almost always) the thread waiting to take the GIL back.
SOCKET_LEAVES = ("untilConcludes (twisted/python/util.py)", "doRead (twisted/internet/tcp.py)",
                 "accept (socket.py)", "_getsockname (twisted/internet/tcp.py)")


def summarise_profile(path: Path) -> list[str]:
    """Where the reactor thread's samples went (idle in epoll / in a socket call, i.e. waiting
    for the GIL / running Python), and the transform threads' busiest frames."""
    reactor: dict[str, int] = {}
    threads: dict[str, int] = {}
    frames_top: dict[str, int] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():     # py-spy writes a thread with no frames as "name;"
            continue
        frames = [re.sub(r":\d+\)", ")", f) for f in stack.split(";")]
        n = int(count)
        thread = frames[0].split(": ", 1)[-1]
        if thread == "MainThread":
            leaf = frames[-1]
            kind = ("idle in epoll" if leaf.startswith("doPoll (")
                    else "in a socket call (waiting for the GIL)" if leaf in SOCKET_LEAVES
                    else "running Python")
            reactor[kind] = reactor.get(kind, 0) + n
        elif "transform" in thread:
            threads["transform"] = threads.get("transform", 0) + n
            key = " <- ".join(reversed(frames[-2:]))
            frames_top[key] = frames_top.get(key, 0) + n
    total = sum(reactor.values()) or 1
    lines = [f"{path}: reactor thread {total} samples"]
    lines += [f"  {100 * v / total:5.1f} %  {k}" for k, v in sorted(reactor.items(),
                                                                  key=lambda kv: -kv[1])]
    busy = threads.get("transform", 0) or 1
    lines.append(f"  transform threads {busy} samples, busiest frames:")
    lines += [f"  {100 * v / busy:5.1f} %  {k}" for k, v in sorted(
        frames_top.items(), key=lambda kv: -kv[1])[:10]]
    return lines


def summarise_cold(answers: list[dict]) -> dict:
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    shed = with_retry_after = 0
    for a in answers:
        key = str(a["status"])
        statuses[key] = statuses.get(key, 0) + 1
        if a.get("error"):
            errors[f"{a['status']} {a['error']}"] = errors.get(f"{a['status']} {a['error']}",
                                                               0) + 1
        if a["status"] in (503, 429):
            shed += 1
            with_retry_after += a["retry_after"] is not None
    ok = [a["s"] for a in answers if a["status"] == 200]
    refused = [a["s"] for a in answers if a["status"] in (503, 429)]
    other = len(answers) - len(ok) - len(refused)
    return {"sent": len(answers), "statuses": statuses, "errors": errors,
            "ok": len(ok), "shed": shed, "shed_with_retry_after": with_retry_after,
            "other": other,
            "ok_p50_ms": ms(pct(ok, 50)), "ok_p99_ms": ms(pct(ok, 99)), "ok_max_ms":
            ms(max(ok)) if ok else None,
            "shed_p50_ms": ms(pct(refused, 50)), "shed_p99_ms": ms(pct(refused, 99))}


def send_times(directory: Path, phases: dict[str, tuple[float, float]]) -> dict:
    """``--send-times``: per phase, the hits' time from ``Request.finish()`` to their last
    byte sent (wall and reactor CPU ms, p50 / p99 / max), from the proxy's processes' files."""
    rows = []
    for path in directory.iterdir():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append(tuple(float(x) for x in parts))
    out = {}
    for name, (start, end) in phases.items():
        inside = [r for r in rows if start <= r[0] < end]
        wall, cpu = [r[1] for r in inside], [r[2] for r in inside]
        out[name] = {"n": len(inside), **{
            f"{what}_{p}_ms": round(pct(values, p), 2) if values else None
            for what, values in (("wall", wall), ("cpu", cpu)) for p in (50, 99)},
            "wall_max_ms": round(max(wall), 1) if wall else None}
    return out


def summarise_hits(samples, start: float, end: float) -> dict:
    inside = [s for s in samples if start <= s[0] < end]
    lat = [s[1] for s in inside if s[2] == 200]
    # what the proxy took: the prober's own waits for a core taken out
    own = [max(0.0, s[1] - s[4]) for s in inside if s[2] == 200]
    return {"n": len(inside), "ok": len(lat),
            "proxy_p50_ms": ms(pct(own, 50)), "proxy_p99_ms": ms(pct(own, 99)),
            "proxy_max_ms": ms(max(own)) if own else None,
            "prober_wait_p99_ms": ms(pct([s[4] for s in inside if s[2] == 200], 99)),
            "not_ok": len(inside) - len(lat),
            "not_hit": sum(1 for s in inside if s[2] == 200 and not str(s[3]).startswith("HIT")),
            "p50_ms": ms(pct(lat, 50)), "p99_ms": ms(pct(lat, 99)),
            "max_ms": ms(max(lat)) if lat else None}


# --------------------------------------------------------------------------- main

async def scenario(args, proxy: Proxy, log) -> dict:
    runid = f"{time.strftime('%H%M%S')}{secrets.token_hex(2)}"
    urls = ColdUrls(runid)
    port = proxy.port
    result: dict = {"runid": runid, "args": {k: str(v) for k, v in vars(args).items()}}

    # 1. warm: the hit URLs cached, the solo cold latency
    for path in HIT_URLS:
        for _ in range(3):
            got = await get(port, path, args.timeout)
        if got["status"] != 200:
            raise SystemExit(f"hit URL {path}: {got['status']} {got.get('error')}; is the origin "
                             "up (/tmp/mediaproxy-bench/peers.sh start)?")
    await sequential(port, urls, "w", 2, args.timeout)   # first transforms: imports, pools
    solo = await sequential(port, urls, "s", 5, args.timeout, PROBE_FILE)
    if any(a["status"] != 200 for a in solo):
        raise SystemExit(f"solo cold requests failed: {[a['status'] for a in solo]}")
    solo_p50 = statistics.median(a["s"] for a in solo)
    normal = args.normal * solo_p50
    result["solo"] = {"file": PROBE_FILE, "p50_ms": ms(solo_p50), "normal_ms": ms(normal)}
    log(f"solo cold {PROBE_FILE}: p50 {ms(solo_p50)} ms -> normal latency <= {ms(normal)} ms")

    sampler = Sampler(proxy.proc.pid, scrape=proxy.scrape)
    sampler.start()
    ctx = multiprocessing.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    total = (args.baseline + args.calibrate + 2 + args.seconds + args.recovery + args.after
             + 2 * args.timeout + 60)
    prober = ctx.Process(target=hit_prober,
                         args=(port, HIT_URLS, args.hit_rate, total, stop, out), daemon=True)
    prober.start()
    phases: dict[str, tuple[float, float]] = {}
    try:
        # 2. baseline: hits alone
        spy = profile(args, proxy.proc.pid, log, "baseline", args.baseline)
        t0 = time.monotonic()
        await asyncio.sleep(args.baseline)
        phases["baseline"] = (t0, time.monotonic())
        if spy is not None:
            spy.wait(30)
        idle_rss = sampler.between(*phases["baseline"])["peak_rss_mib"]

        # 3. calibrate: the sustainable cold rate, closed loop
        t0 = time.monotonic()
        answers, elapsed = await closed_loop(port, urls, args.conns, args.calibrate, args.timeout)
        phases["calibrate"] = (t0, time.monotonic())
        cal = summarise_cold(answers)
        rate = cal["ok"] / elapsed
        usage = sampler.between(*phases["calibrate"])
        cal.update({"seconds": round(elapsed, 1), "transforms_per_s": round(rate, 1),
                    "cpu_ms_per_transform": round(1000 * usage["cpu_s"] / cal["ok"], 1)
                    if cal["ok"] and usage.get("cpu_s") is not None else None, **usage})
        result["calibrate"] = cal
        log(f"sustainable cold rate ({args.conns} conns, {elapsed:.1f} s): {rate:.1f} "
            f"transforms/s, p50 {cal['ok_p50_ms']} ms, p99 {cal['ok_p99_ms']} ms, "
            f"statuses {cal['statuses']}")
        if rate <= 0:
            raise SystemExit("no cold request succeeded during calibration")
        await asyncio.sleep(2.0)   # the calibration's tail drains

        # 4. overload: open loop at factor x rate
        offered = args.factor * rate
        log(f"overload: {offered:.1f} requests/s of never-seen URLs for {args.seconds:g} s "
            f"(at most {args.max_outstanding} outstanding, {args.timeout:g} s timeout each)")
        spy = profile(args, proxy.proc.pid, log, "overload", args.seconds / 2)
        fetched_before = source_fetches(proxy)
        t0 = time.monotonic()
        load, not_sent, load_end, pending = await open_loop(
            port, urls, offered, args.seconds, args.max_outstanding, args.timeout)
        phases["overload"] = (t0, load_end)
        if spy is not None:
            spy.wait(30)

        # 5. recovery (the overload's stragglers finish meanwhile)
        probes, recovered = await recovery(port, urls, load_end, normal, args.probe_interval,
                                           args.recovery, args.timeout)
        if pending:
            await asyncio.wait(pending, timeout=args.timeout + 5)
        # every source fetched for the overload's requests (and the recovery's few probes)
        fetched = source_fetches(proxy) - fetched_before - len(probes)
        phases["recovery"] = (load_end, time.monotonic())
        t0 = time.monotonic()
        await asyncio.sleep(args.after)
        phases["after"] = (t0, time.monotonic())
    finally:
        stop.set()
        try:
            samples = out.get(timeout=60)
        except Exception:   # noqa: BLE001 -- the prober died: report without hits
            samples = []
        prober.join(10)
        if prober.is_alive():
            prober.kill()
        sampler.stopped.set()
        sampler.join(5)

    over = summarise_cold(load)
    over.update({"offered_per_s": round(offered, 1), "scheduled": int(offered * args.seconds),
                 "not_sent_client_limit": not_sent, "still_out_at_end": sum(
                     1 for t in pending if not t.done()),
                 "shed_per_s": round(over["shed"] / args.seconds, 1),
                 "sources_fetched": fetched,
                 "fetched_not_served": fetched - over["ok"],
                 "ok_per_s": round(over["ok"] / args.seconds, 1),
                 **sampler.between(*phases["overload"])})
    result["overload"] = over
    result["hits"] = {name: {**summarise_hits(samples, *phases[name]), **{
        k: sampler.between(*phases[name])[k] for k in (
            "reactor_lag_max_ms", "reactor_on_cpu_pct", "reactor_runq_pct")}}
        for name in ("baseline", "calibrate", "overload", "recovery", "after")}
    result["recovery"] = {
        "seconds": None if recovered is None else round(recovered, 2),
        "probes": [{"status": p["status"], "ms": ms(p["s"]), "since_end_s":
                    round(p["since_end"], 2), "error": p.get("error")} for p in probes]}
    if args.send_times_dir is not None:
        result["send_times"] = send_times(args.send_times_dir, phases)
    peak = max(s[1] for s in sampler.samples) / MiB if sampler.samples else None
    result["rss"] = {"idle_mib": idle_rss, "peak_mib": round(peak, 1) if peak else None,
                     "by_phase": {name: sampler.between(*span)["peak_rss_mib"]
                                  for name, span in phases.items()}}
    return result


def budget(proxy: Proxy) -> dict:
    """The memory the proxy was configured to hold: transform capacity (its /metrics gauge,
    else limits.transform_memory), memory cache and source cache (/admin/config)."""
    config = proxy.config()
    scrape = proxy.scrape()
    capacity = metric_values(scrape, "mediaproxy_transform_memory_bytes").get(
        '{state="capacity"}')
    if capacity is None:
        capacity = config.get("limits", {}).get("transform_memory") or None
    cache = config.get("cache", {})
    return {
        "transform_capacity_mib": round(capacity / MiB, 1) if capacity else None,
        "memory_cache_mib": round(cache.get("memory", {}).get("max_bytes", 0) / MiB, 1),
        "source_cache_mib": round(cache.get("source", {}).get("memory_bytes", 0) / MiB, 1),
        "workers": config.get("server", {}).get("workers"),
        "threads": config.get("processing", {}).get("threads"),
        "queue_limit": config.get("processing", {}).get("queue_limit"),
        "queue_timeout": config.get("processing", {}).get("queue_timeout"),
    }


def report(result: dict, args) -> list[str]:
    cal, over, hits, rec, rss, bud = (result["calibrate"], result["overload"], result["hits"],
                                      result["recovery"], result["rss"], result["budget"])
    limit = None
    if rss["idle_mib"] is not None and bud["transform_capacity_mib"] is not None:
        limit = round(rss["idle_mib"] + bud["transform_capacity_mib"] + bud["memory_cache_mib"]
                      + bud["source_cache_mib"], 1)
    rss["budget_mib"] = limit
    before, during, after = hits["baseline"], hits["overload"], hits["after"]
    cold_bound = round(1000 * float(bud["queue_timeout"] or 0) + (cal["ok_p99_ms"] or 0), 1)
    checks = [
        ("sheds with Retry-After",
         f"{over['shed']} of {over['sent']} shed ({over['shed_per_s']}/s), "
         f"{over['shed_with_retry_after']} with Retry-After; other {over['other']}",
         over["shed"] > 0 and over["shed_with_retry_after"] == over["shed"]
         and over["other"] == 0),
        ("accepted cold p99 bounded",
         f"{over['ok']} served ({over['ok_per_s']}/s = {ratio(over['ok_per_s'], cal['transforms_per_s'])}"
         f" x sustainable), p50 {over['ok_p50_ms']} ms, p99 {over['ok_p99_ms']} ms "
         f"(calibration p99 {cal['ok_p99_ms']} ms: x{ratio(over['ok_p99_ms'], cal['ok_p99_ms'])}; "
         f"bound: queue_timeout + calibration p99 = {cold_bound} ms)",
         over["ok_p99_ms"] is not None and cal["ok_p99_ms"] is not None
         and over["ok_p99_ms"] <= cold_bound),
        ("hits fast during overload",
         f"p50 {during['p50_ms']} / p99 {during['p99_ms']} / max {during['max_ms']} ms vs before "
         f"{before['p50_ms']} / {before['p99_ms']} / {before['max_ms']} ms: p99 "
         f"x{ratio(during['p99_ms'], before['p99_ms'])}; {during['not_ok']} not 200, "
         f"{during['not_hit']} not HIT",
         during["not_ok"] == 0 and during["p99_ms"] is not None
         and during["p99_ms"] <= args.max_hit_p99_ms),
        ("RSS under budget",
         f"peak {rss['peak_mib']} MiB (overload {rss['by_phase'].get('overload')}) vs idle "
         f"{rss['idle_mib']} + transforms {bud['transform_capacity_mib']} + memory cache "
         f"{bud['memory_cache_mib']} + source cache {bud['source_cache_mib']} = {limit} MiB: "
         f"x{ratio(rss['peak_mib'], limit)}",
         limit is not None and rss["peak_mib"] is not None and rss["peak_mib"] <= limit),
        ("recovers at once",
         f"a new cold request served 200 within {result['solo']['normal_ms']} ms "
         f"{rec['seconds']} s after the load's end ({len(rec['probes'])} probes); hits after: "
         f"p50 {after['p50_ms']} / p99 {after['p99_ms']} ms (x{ratio(after['p99_ms'], before['p99_ms'])}"
         f" of before)",
         rec["seconds"] is not None and rec["seconds"] <= args.max_recovery),
    ]
    result["checks"] = {name: ok for name, _, ok in checks}
    lines = [f"# overload: {over['offered_per_s']} req/s offered = {args.factor:g} x the "
             f"sustainable {cal['transforms_per_s']} transforms/s, {args.seconds:g} s; "
             f"proxy workers={bud['workers']} threads={bud['threads']} "
             f"queue_limit={bud['queue_limit']} queue_timeout={bud['queue_timeout']}",
             f"statuses {over['statuses']}; errors {over['errors']}; not sent (client limit) "
             f"{over['not_sent_client_limit']}; proxy CPU {over.get('cpu_pct')} % during "
             f"({over.get('cpu_s')} s: {ratio(1000 * (over.get('cpu_s') or 0), over['sent'])} "
             f"ms a request); sources fetched {over['sources_fetched']}, of which not served "
             f"{over['fetched_not_served']} (fetched, then shed or timed out)",
             "",
             "| requirement | measured | ok |", "|---|---|---|"]
    lines += [f"| {name} | {text} | {'yes' if ok else 'NO'} |" for name, text, ok in checks]
    lines += ["", "| hits | n | p50 ms | p99 ms | max ms | less the prober's waits for a core: "
              "p50 / p99 / max ms | not 200 | reactor lag max ms | "
              "reactor on a core % | reactor waiting for a core % |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {h['n']} | {h['p50_ms']} | {h['p99_ms']} | {h['max_ms']} | "
              f"{h['proxy_p50_ms']} / {h['proxy_p99_ms']} / {h['proxy_max_ms']} | "
              f"{h['not_ok']} | {h['reactor_lag_max_ms']} | {h['reactor_on_cpu_pct']} | "
              f"{h['reactor_runq_pct']} |" for name, h in hits.items()]
    if "send_times" in result:
        lines += ["", "| hits: finish() to last byte sent | n | wall p50 / p99 / max ms | "
                  "reactor CPU p50 / p99 ms |", "|---|---|---|---|"]
        lines += [f"| {name} | {t['n']} | {t['wall_50_ms']} / {t['wall_99_ms']} / "
                  f"{t['wall_max_ms']} | {t['cpu_50_ms']} / {t['cpu_99_ms']} |"
                  for name, t in result["send_times"].items()]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout to run (PYTHONPATH)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the proxy")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION__KEY=VALUE",
                        help="a setting of the proxy, as MEDIAPROXY_SECTION__KEY (repeatable)")
    parser.add_argument("--seconds", type=float, default=30.0, help="overload duration")
    parser.add_argument("--factor", type=float, default=4.0, help="times the sustainable rate")
    parser.add_argument("--calibrate", type=float, default=10.0, help="calibration seconds")
    parser.add_argument("--conns", type=int, default=4, help="calibration connections")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of hits alone")
    parser.add_argument("--hit-rate", type=float, default=20.0, help="hit GETs per second")
    parser.add_argument("--max-outstanding", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--normal", type=float, default=2.0,
                        help="recovered: a cold request within this many times the solo p50")
    parser.add_argument("--probe-interval", type=float, default=0.25)
    parser.add_argument("--recovery", type=float, default=30.0, help="most seconds to recover")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of hits after")
    parser.add_argument("--max-hit-p99-ms", type=float, default=50.0,
                        help="the 'hits fast' check: p99 during the overload at most this")
    parser.add_argument("--max-recovery", type=float, default=1.0,
                        help="the 'recovers at once' check: seconds after the load's end")
    parser.add_argument("--json", type=Path, help="write the whole result here")
    parser.add_argument("--profile", type=Path,
                        help="py-spy raw stacks of the proxy during the overload, to this file")
    parser.add_argument("--log", type=Path, default=Path("/tmp/mediaproxy-overload.log"),
                        help="the proxy's output")
    parser.add_argument("--send-times", action="store_true",
                        help="time the hits from Request.finish() to their last byte sent, in "
                        "the proxy (bench/sendtime/sitecustomize.py; measurement only)")
    parser.add_argument("--summarise", type=Path, nargs="+", metavar="RAW",
                        help="summarise py-spy raw files written by --profile; no run")
    args = parser.parse_args()
    if args.summarise:
        for path in args.summarise:
            print("\n".join(summarise_profile(path)))
        return 0
    settings = dict(s.split("=", 1) for s in args.set)
    code = args.code.resolve()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    try:
        urllib.request.urlopen(f"{ORIGIN}/media/uploads/small.gif", timeout=5).read()
    except OSError as e:
        raise SystemExit(f"origin {ORIGIN} down ({e}): /tmp/mediaproxy-bench/peers.sh start") from None
    args.send_times_dir = None
    if args.send_times:
        import tempfile
        args.send_times_dir = Path(tempfile.mkdtemp(prefix="overload-send-times-"))
    proxy = Proxy(code, args.python, settings, args.log, args.send_times_dir)
    log(f"proxy from {code} on {HOST}:{proxy.port} (pid {proxy.proc.pid}, log {args.log})")
    try:
        result = asyncio.run(scenario(args, proxy, log))
        result["budget"] = budget(proxy)
        scrape = proxy.scrape()
        result["proxy_metrics"] = {
            name: metric_values(scrape, name) for name in (
                "mediaproxy_admission_shed_total", "mediaproxy_transform_memory_bytes")}
        result["code"] = str(code)
    finally:
        proxy.stop()
    if args.send_times_dir is not None:
        import shutil
        shutil.rmtree(args.send_times_dir, ignore_errors=True)
    lines = report(result, args)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        log(f"results: {args.json}")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
