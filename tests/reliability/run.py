"""
The reliability suite's runner (docs/reliability.md)::

    python -m tests.reliability --quick          # the CI subset, under 2 minutes
    python -m tests.reliability --full           # every case, under 15 minutes
    python -m tests.reliability --full --write-docs   # ... and rewrite the table in the docs
    python -m tests.reliability jpeg-rescan backend-killed   # some cases (full scale)
    python -m tests.reliability --list

Each case starts its own proxy and backend processes in a fresh temp dir, prints one Markdown
table row when it ends, and the whole table goes to ``.reliability/table.md`` (and, with
``--write-docs``, between the markers in docs/reliability.md). The exit status is 1 when any
case failed, so CI fails with it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .cases import CASES, Context, Result
from .harness import MiB, ROOT

OUT = ROOT / ".reliability"
DOCS = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- reliability-table:begin -->", "<!-- reliability-table:end -->"
HEADER = ("| case (`./dev reliability CASE`) | what | answers | normal success | normal p99 "
          "| peak RSS | figures | verdict |\n|---|---|---|---|---|---|---|---|")


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def row(result: Result) -> str:
    answers = ", ".join(f"{label} x{n}" for label, n in sorted(result.attack.items()))
    normal = result.normal or {}
    requests = normal.get("requests", 0)
    success = f"{normal.get('success', 0):.1%} of {requests}" if requests else "-"
    p99 = f"{normal.get('p99', 0) * 1000:.0f} ms" if requests else "-"
    rss = f"{result.peak_rss / MiB:.0f} MiB" if result.peak_rss else "-"
    figures = "; ".join(f"{k}: {v}" for k, v in result.figures.items())
    verdict = result.verdict
    if result.problems:
        verdict += ": " + "; ".join(result.problems)
    return "| " + " | ".join(cell(c) for c in (
        f"`{result.case}`", result.description, answers or "-", success, p99, rss, figures,
        verdict)) + " |"


def run_case(case, quick: bool) -> Result:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mp-rel-{case.name}-") as tmp:
        ctx = Context(Path(tmp), quick)
        try:
            result = case.run(ctx)
        except Exception as e:
            result = Result(case.name, "the case itself failed")
            result.problems.append(f"{type(e).__name__}: {e}")
            traceback.print_exc()
            for process in ctx.started:
                tail = getattr(process, "log_tail", None)
                if tail:
                    print(tail(), file=sys.stderr)
        finally:
            ctx.close()
    result.seconds = time.monotonic() - started
    result.case = case.name                      # the name that runs it again
    return result


def commit() -> str:
    """The commit measured (with ``+`` when the tree has changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        return (head or "?") + ("+" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def write_docs(table: str) -> None:
    text = DOCS.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOCS.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cases", nargs="*", help="case names (default: all, or the quick subset)")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="the CI subset, scaled down")
    scale.add_argument("--full", action="store_true", help="every case at full scale")
    p.add_argument("--write-docs", action="store_true",
                   help="rewrite the table between the markers in docs/reliability.md")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.name:24} {case.kind:7} {'quick' if case.quick else ''}")
        return 0
    names = {case.name for case in CASES}
    unknown = [n for n in args.cases if n not in names]
    if unknown:
        p.error(f"unknown cases: {', '.join(unknown)} (see --list)")
    chosen = [c for c in CASES if (c.name in args.cases if args.cases
                                   else (c.quick or not args.quick))]
    started = time.monotonic()
    scale_name = "quick" if args.quick else "full"
    print(f"[reliability] {len(chosen)} cases, {scale_name} scale", flush=True)
    print(HEADER, flush=True)
    results = []
    for case in chosen:
        result = run_case(case, args.quick)
        results.append(result)
        print(row(result), f"<!-- {result.seconds:.0f} s -->", flush=True)
    failed = [r.case for r in results if r.problems]
    total = time.monotonic() - started
    table = HEADER + "\n" + "\n".join(row(r) for r in results)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    footer = (f"\n\n{len(results) - len(failed)} of {len(results)} cases pass "
              f"({scale_name} scale, {total:.0f} s, {when}, commit {commit()}).")
    OUT.mkdir(exist_ok=True)
    name = f"table-{scale_name}.md" if not args.cases else "table-some.md"
    (OUT / name).write_text(table + footer + "\n")
    if args.write_docs:
        write_docs(table + footer)
    print(footer.strip())
    if failed:
        print(f"[reliability] FAILED: {', '.join(failed)}")
    return 1 if failed else 0
