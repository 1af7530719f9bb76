"""Issue 14's results table, re-measured in one run of the shared bench and printed as Markdown
(ready for docs/performance.md): mediaproxy against thumbor and the bare-Twisted floor.

    .venv/bin/python bench/table.py                  # bench/run.sh (all scenarios, thumbor then
                                                     # mediaproxy on 127.0.0.1:8080), then the table
    .venv/bin/python bench/table.py -- --duration 10 # options after -- go to the shared bench.py
    .venv/bin/python bench/table.py --parse THUMBOR.json MEDIAPROXY.json   # no run: just the table
    .venv/bin/python bench/table.py --json out.json  # the figures as JSON as well

Running it binds 127.0.0.1:8080 (bench/run.sh's port: never while other benchmarks run there).
Extra settings of the proxy under test: ``MEDIAPROXY_BENCH_ENV`` (see bench/run.sh). The result
files are the ones bench/run.sh's harness writes in ``$BENCH_WORK/results`` (default
/tmp/mediaproxy-bench/results): the newest ``*-thumbor.json`` and ``*-mediaproxy.json`` that
appeared during this run.

Rows (each a ratio mediaproxy / thumbor unless said; the goals are the issue's):

* srcset: total time of the 8 sizes of one never-seen 4000 px JPEG; origin fetches each.
* concurrent cold load (16 conns): transforms/s; CPU ms per transform; peak RSS of the load.
* hot hits (64 conns): req/s against thumbor, and against the floor measured in the same run.
* stampede of 50: origin fetches and estimated transforms, each side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = Path(os.environ.get("BENCH_WORK", "/tmp/mediaproxy-bench")) / "results"


def ratio(a, b) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def fmt(x, digits=0) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}"


def rows(thumbor: dict, mediaproxy: dict) -> list[dict]:
    """The table's rows: name, ratio text, detail, goal text and whether it is met."""
    t, m = thumbor["scenarios"], mediaproxy["scenarios"]
    out = []
    if "srcset" in t and "srcset" in m:
        ts, ms = t["srcset"], m["srcset"]
        r = ratio(ms["total_wall_ms"], ts["total_wall_ms"])
        out.append({
            "scenario": "srcset: 8 sizes of one new 4000 px JPEG, total time",
            "ratio": r,
            "detail": f"{fmt(ms['total_wall_ms'])} vs {fmt(ts['total_wall_ms'])} ms; origin "
                      f"fetches {ms['origin_fetches']} vs {ts['origin_fetches']}; "
                      f"{8 - ms['invalid']}/8 valid",
            "goal": "at most 0.5, 1 fetch",
            "met": r is not None and r <= 0.5 and ms["origin_fetches"] == 1
                   and ms["invalid"] == 0})
    if "load" in t and "load" in m:
        tl, ml = t["load"], m["load"]
        r = ratio(ml["ok_per_s"], tl["ok_per_s"])
        trss, mrss = tl["rss"].get("peak_rss_mib"), ml["rss"].get("peak_rss_mib")
        errors_m = sum(ml["errors"].values())
        out.append({
            "scenario": "concurrent cold load (16 conns), transforms/s",
            "ratio": r,
            "detail": f"{fmt(ml['ok_per_s'])} vs {fmt(tl['ok_per_s'])} /s; CPU "
                      f"{fmt(ml['target_cpu_ms_per_ok'], 1)} vs "
                      f"{fmt(tl['target_cpu_ms_per_ok'], 1)} ms each (x"
                      f"{ratio(ml['target_cpu_ms_per_ok'], tl['target_cpu_ms_per_ok'])}); peak "
                      f"RSS {fmt(mrss)} vs {fmt(trss)} MiB (x{ratio(mrss, trss)}); "
                      f"errors {errors_m}",
            "goal": "at least 1.3, peak RSS at most thumbor's",
            "met": r is not None and r >= 1.3 and mrss is not None and trss is not None
                   and mrss <= trss and errors_m == 0})
    if "hot" in t and "hot" in m:
        th, mh = t["hot"]["target"], m["hot"]
        r = ratio(mh["target"]["rps"], th["rps"])
        floor = mh.get("ratio_rps_target_over_floor")
        procs = len(mh["target"].get("server_cpu_s_by_pid") or {}) or None
        out.append({
            "scenario": "hot hits (64 conns), req/s",
            "ratio": r,
            "detail": f"{fmt(mh['target']['rps'])} vs {fmt(th['rps'])}; "
                      f"{fmt(floor, 2) if floor is not None else 'n/a'} of the bare-Twisted "
                      f"floor ({fmt(mh['floor']['rps']) if 'floor' in mh else 'n/a'} req/s); "
                      f"{procs} proxy process(es) sampled",
            "goal": "at least 3 (default deployment); one process at least 0.5 of the floor",
            "met": r is not None and r >= 3})
    if "stampede" in t and "stampede" in m:
        ts, ms = t["stampede"], m["stampede"]
        out.append({
            "scenario": "stampede of 50",
            "ratio": None,
            "detail": f"{ms['origin_fetches']} fetch(es), about {fmt(ms['est_transforms'], 1)} "
                      f"transforms (thumbor {ts['origin_fetches']} fetches, about "
                      f"{fmt(ts['est_transforms'], 1)}); statuses {ms['statuses']}",
            "goal": "keep (1 fetch, about 1.5 transforms)",
            "met": ms["origin_fetches"] == 1 and ms["est_transforms"] is not None
                   and ms["est_transforms"] <= 2.0 and ms["statuses"] == {"200": ms["concurrent"]}})
    return out


def markdown(thumbor: dict, mediaproxy: dict, names: tuple[str, str]) -> str:
    lines = [f"Measured {mediaproxy.get('started', '?')} (runs {names[0]} and {names[1]}; "
             f"{mediaproxy['host']['cpus']} cores; mediaproxy processes sampled: "
             f"{len(mediaproxy['sampled_processes']['pids_at_start'])} at start).",
             "",
             "| scenario | mediaproxy / thumbor | figures | goal | met |",
             "|---|---|---|---|---|"]
    for row in rows(thumbor, mediaproxy):
        shown = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(f"| {row['scenario']} | {shown} | {row['detail']} | {row['goal']} | "
                     f"{'yes' if row['met'] else 'no'} |")
    return "\n".join(lines)


def newest(paths: list[Path], target: str) -> Path | None:
    found = sorted(p for p in paths if p.name.endswith(f"-{target}.json"))
    return found[-1] if found else None


def run_bench(extra: list[str]) -> tuple[Path, Path]:
    before = set(RESULTS.glob("*.json")) if RESULTS.is_dir() else set()
    env = dict(os.environ, BENCH_TARGETS="thumbor mediaproxy")
    subprocess.run([str(HERE / "run.sh"), *extra], env=env, check=True, timeout=1800)
    new = [p for p in RESULTS.glob("*.json") if p not in before]
    thumbor, mediaproxy = newest(new, "thumbor"), newest(new, "mediaproxy")
    if thumbor is None or mediaproxy is None:
        raise SystemExit(f"bench/run.sh wrote no thumbor and mediaproxy results in {RESULTS}")
    return thumbor, mediaproxy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parse", nargs=2, type=Path, metavar=("THUMBOR", "MEDIAPROXY"),
                        help="print the table of these two result files; no run")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here too")
    parser.add_argument("bench_args", nargs="*", help="after --: options of the shared bench.py")
    args = parser.parse_args()
    if args.parse:
        thumbor_path, mediaproxy_path = args.parse
    else:
        thumbor_path, mediaproxy_path = run_bench(args.bench_args)
    thumbor = json.loads(thumbor_path.read_text())
    mediaproxy = json.loads(mediaproxy_path.read_text())
    print(markdown(thumbor, mediaproxy, (thumbor_path.name, mediaproxy_path.name)))
    if args.json:
        args.json.write_text(json.dumps({"thumbor": str(thumbor_path),
                                         "mediaproxy": str(mediaproxy_path),
                                         "rows": rows(thumbor, mediaproxy)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
