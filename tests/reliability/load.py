"""
The load cases: 4x overload, the soak, and the fuzz run over the decode guard. See
docs/reliability.md for what each must show.
"""

from __future__ import annotations

import threading
import time

from . import inputs
from .common import (NORMAL_FILES, NORMAL_HIT, OVERLOAD_RECOVERY_LIMIT, Context, Guard, Result,
                     answer_label, judge_normal, judge_rss, repeat_concurrently)
from .harness import MiB, NormalTraffic, fetch, percentile


def case_overload(ctx: Context) -> Result:
    """4x the transforms the proxy can do, offered at a steady rate: hits unaffected, the excess
    shed with 503 Retry-After, service back once the overload stops."""
    seconds = ctx.scale(10, 60)
    result = Result("overload-4x", f"4x the measured transform capacity for {seconds} s")
    origin = ctx.origin({**NORMAL_FILES, "/media/attack/noise.jpg": inputs.big_noise_jpeg()})
    proxy = ctx.proxy(origin)
    fetch(proxy.port, NORMAL_HIT)
    counter = iter(range(10_000_000))
    lock = threading.Lock()

    def cold(timeout=30):
        with lock:
            width = 100 + next(counter) % 1500
        start = time.monotonic()
        got = fetch(proxy.port, f"/media/attack/noise.jpg?w={width}&fmt=webp", timeout=timeout)
        return got, time.monotonic() - start

    measured = repeat_concurrently(lambda i: cold(), 2, 4.0, 200)
    capacity = sum(1 for (s, _, _), _ in measured if s == 200) / 4.0
    rate = max(4 * capacity, 1.0)
    result.figures["capacity"] = f"{capacity:.1f}/s, offered {rate:.1f}/s"
    in_flight = 512
    answers, pool = [], threading.BoundedSemaphore(in_flight)

    def one():
        try:
            answers.append(cold())
        finally:
            pool.release()

    with Guard(proxy) as sampler, \
            NormalTraffic(proxy.port, clients=2, mix=("hit", "pass")) as normal:
        time.sleep(1.0)
        start = time.monotonic()
        sent = 0
        while time.monotonic() < start + seconds:
            target = start + sent / rate
            time.sleep(max(0.0, target - time.monotonic()))
            if not pool.acquire(timeout=1.0):
                result.attack["client pool full (not sent)"] += 1
                continue
            threading.Thread(target=one, daemon=True).start()
            sent += 1
        end = time.monotonic()
        recovered_after = None                       # a fresh transform served again
        while time.monotonic() < end + 60:
            (status, _, _), latency = cold(timeout=30)
            if status == 200:
                recovered_after = time.monotonic() - end
                break
            time.sleep(0.1)
        drain = time.monotonic() + 40                # wait for the answers in flight
        for _ in range(in_flight):
            if not pool.acquire(timeout=max(0.0, drain - time.monotonic())):
                break
    for (status, headers, body), _ in answers:
        label, problem = answer_label(status, headers, body)
        if status == 503 and "retry-after" not in headers:
            problem = "a 503 without Retry-After"
        result.attack[label] += 1
        if problem and problem not in result.problems:
            result.problems.append(problem)
    shed = sum(v for k, v in result.attack.items() if k.startswith("503"))
    result.figures["shed"] = f"{shed / max(1, len(answers)):.0%}"
    result.figures["recovered"] = (f"{recovered_after:.2f} s after" if recovered_after is not None
                                   else "never")
    if recovered_after is None:
        result.problems.append("no transform succeeded after the overload")
    elif recovered_after > OVERLOAD_RECOVERY_LIMIT:
        result.problems.append(f"a transform took {recovered_after:.1f} s to succeed after "
                               f"the overload (> {OVERLOAD_RECOVERY_LIMIT:g} s)")
    judge_normal(result, normal, start, end, kinds=("hit", "pass"))
    judge_rss(result, sampler)
    return result


def case_soak(ctx: Context, seconds: float | None = None) -> Result:
    seconds = seconds or ctx.scale(30, 600)
    result = Result("soak", f"{seconds / 60:g} min of mixed traffic: RSS growth, fds, p99 drift")
    origin = ctx.origin(NORMAL_FILES)
    proxy = ctx.proxy(origin, {"cache.memory.max_bytes": 32 * MiB})
    fetch(proxy.port, NORMAL_HIT)
    warm = min(60.0, seconds / 5)
    with Guard(proxy) as sampler, NormalTraffic(proxy.port) as normal:
        start = time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
    after_warm = [s for s in sampler.samples if s[0] >= start + warm]
    if not after_warm:
        result.problems.append("no samples")
        return result
    rss0, fd0 = after_warm[0][1], after_warm[0][2]
    rss1, fd1 = after_warm[-1][1], after_warm[-1][2]
    growth = (rss1 - rss0) / rss0
    window = warm
    first = [o.latency for o in normal.between(start + warm, start + warm + window)]
    last = [o.latency for o in normal.between(end - window, end)]
    p_first, p_last = percentile(first, 99), percentile(last, 99)
    result.figures.update({
        "RSS after warm-up -> end": f"{rss0 / MiB:.0f} -> {rss1 / MiB:.0f} MiB ({growth:+.1%})",
        "fds": f"{fd0} -> {fd1}",
        "p99 first/last window": f"{p_first * 1000:.0f} / {p_last * 1000:.0f} ms",
    })
    if growth >= 0.10:
        result.problems.append(f"RSS grew {growth:.1%} >= 10 %")
    if fd1 > fd0 + 5:
        result.problems.append(f"fds grew {fd0} -> {fd1}")
    if p_last > 2 * p_first + 0.05:
        result.problems.append("p99 drifted: more than twice the first window's")
    judge_normal(result, normal, start, end)
    judge_rss(result, sampler)
    return result


def case_fuzz(ctx: Context) -> Result:
    from .fuzz import run as run_fuzz

    seconds = ctx.scale(15, 60)
    result = Result("fuzz-decode-guard",
                    f"coverage-guided fuzzing of imaging.probe/render for {seconds} s")
    found = run_fuzz(seconds, ctx.tmp / "fuzz")
    result.figures.update(found.figures)
    result.attack.update(found.counts)
    result.problems.extend(found.problems)
    result.normal = {"requests": 0, "success": 1.0, "p99": 0.0}
    return result
