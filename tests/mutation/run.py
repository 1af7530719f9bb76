"""
Mutation testing of the security- and correctness-critical modules, with cosmic-ray.

Each module named in ``tests/mutation/modules.toml`` is mutated on disk, one mutant at a time,
and the tests that exercise it are run as a fresh process against every mutant; a mutant the
tests do not fail "survived". Why cosmic-ray and not mutmut: cosmic-ray changes the file on
disk and runs the test command as a new process, so every test sees the mutant however it
imports the code (including the real proxies the end-to-end tests start); mutmut 3 keeps its
mutants in a copied ``mutants/`` tree behind trampolines and forks the pytest process, which
does not mix with the reactor thread our tests run.

The operators are a focused set, one meaningful change per site rather than every possible
replacement (``a < b`` becomes ``a <= b``, not also ``a is b``, ``a > b``, ...):

* comparisons: the boundary (``<`` and ``<=``, ``>`` and ``>=``) and the negation
  (``==``/``!=``, ``is``/``is not``, ``in``/``not in``);
* arithmetic: ``+``/``-``, ``*``/``/``/``//``, ``%`` to ``//``, shifts, bit operators swapped;
* numbers +/- 1, ``True``/``False``, ``and``/``or``, ``not`` added, ``break``/``continue``,
  unary operators, exceptions replaced, ``for`` loops run zero times, decorators removed.

Usage (from the repository root, in the project's venv)::

    python tests/mutation/run.py                    # every module (about an hour on 2 cores)
    python tests/mutation/run.py validation ssrf    # some modules
    python tests/mutation/run.py --ci               # the fixed CI subset, fails under the goal
    python tests/mutation/run.py --list             # the modules, their tests, their goal

It writes ``.mutation/<module>/`` (the session database and ``summary.json``) and prints a
table of scores and every surviving mutant as a diff. The score is killed / (killed +
survived); mutants listed as equivalent in ``modules.toml`` are shown but not counted.
A mutant whose tests run past the timeout counts as killed (the change made the code hang).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORK = ROOT / ".mutation"

KEEP_COMPARISONS = {
    ("Lt", "LtE"), ("LtE", "Lt"), ("Gt", "GtE"), ("GtE", "Gt"),
    ("Eq", "NotEq"), ("NotEq", "Eq"), ("Is", "IsNot"), ("IsNot", "Is"),
    ("In", "NotIn"), ("NotIn", "In"),
}
KEEP_BINARY = {
    ("Add", "Sub"), ("Sub", "Add"), ("Mul", "Div"), ("Div", "Mul"), ("FloorDiv", "Mul"),
    ("Mod", "FloorDiv"), ("Pow", "Mul"), ("LShift", "RShift"), ("RShift", "LShift"),
    ("BitOr", "BitAnd"), ("BitAnd", "BitOr"), ("BitXor", "BitOr"),
}
DROP_OPERATORS = {"core/VariableReplacer", "core/VariableInserter", "core/NoOp"}


def kept(operator: str) -> bool:
    """Whether an operator of cosmic-ray's is in the focused set."""
    if operator in DROP_OPERATORS:
        return False
    for family, table in (("core/ReplaceComparisonOperator_", KEEP_COMPARISONS),
                          ("core/ReplaceBinaryOperator_", KEEP_BINARY)):
        if operator.startswith(family):
            return tuple(operator[len(family):].split("_")) in table
    return True


def function_ranges(path: Path, names: list[str]) -> list[tuple[int, int]]:
    """The line ranges of those of the named functions (``f`` or ``Class.method``) that the
    module defines."""
    tree = ast.parse(path.read_text())
    found: dict[str, tuple[int, int]] = {}

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                found[prefix + node.name] = (first, node.end_lineno)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, prefix + node.name + ".")

    visit(tree.body, "")
    return [found[n] for n in names if n in found]


def _defined(path: Path, names: list[str]) -> list[str]:
    """Which of ``names`` ``path`` defines."""
    return [n for n, r in zip(names, [function_ranges(path, [n]) for n in names]) if r]


def load_modules() -> tuple[dict, dict]:
    data = tomllib.loads((HERE / "modules.toml").read_text())
    return data.get("defaults", {}), data["modules"]


def paths_of(module: dict) -> list[str]:
    """A module entry's files: ``path`` is one file or a list of them (one concern that lives
    in more than one file, e.g. the parameter parsers and the parameters' registration)."""
    path = module["path"]
    return [path] if isinstance(path, str) else list(path)


def test_command(module: dict, defaults: dict) -> str:
    options = defaults.get("pytest_options", "-x -q -p no:randomly -p no:cacheprovider")
    return f"{shlex.quote(sys.executable)} -m pytest {options} " + " ".join(module["tests"])


def prepare(name: str, module: dict, defaults: dict) -> tuple[Path, Path]:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.toml"
    session = work / "session.sqlite"
    timeout = float(module.get("timeout", defaults.get("timeout", 120)))
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(paths_of(module))}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command(module, defaults))}\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n")
    if session.exists():
        session.unlink()
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "init", str(config), str(session)],
                   cwd=ROOT, check=True)
    ranges = None
    if module.get("functions"):
        ranges = {path: function_ranges(ROOT / path, module["functions"])
                  for path in paths_of(module)}
        named = {n for path in paths_of(module)
                 for n in _defined(ROOT / path, module["functions"])}
        missing = [n for n in module["functions"] if n not in named]
        if missing:
            raise SystemExit(f"{name}: no function named {', '.join(missing)} in "
                             f"{', '.join(paths_of(module))}")
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            mutation = item.mutations[0]
            line = mutation.start_pos[0]
            outside = ranges is not None and not any(
                a <= line <= b for a, b in ranges[_relative(mutation.module_path)])
            if outside or not kept(mutation.operator_name):
                db.set_result(item.job_id, WorkResult(
                    output="not in the focused set", worker_outcome=WorkerOutcome.SKIPPED))
    return config, session


def _relative(path) -> str:
    path = Path(path)
    return str(path.resolve().relative_to(ROOT) if path.is_absolute() else path)


def summarise(name: str, module: dict, session: Path) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db

    sources = {path: (ROOT / path).read_text().splitlines() for path in paths_of(module)}
    equivalent = {(e["operator"], e["line"].strip()): e["why"]
                  for e in module.get("equivalent", [])}
    killed, survivors, explained, incompetent = 0, [], [], 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            outcome = result.worker_outcome.value
            if outcome == "skipped":
                continue
            mutation = item.mutations[0]
            line_no = mutation.start_pos[0]
            path = _relative(mutation.module_path)
            text = sources[path][line_no - 1].strip()
            row = {"operator": mutation.operator_name, "file": path, "line_no": line_no,
                   "line": text,
                   "occurrence": mutation.occurrence, "diff": result.diff or ""}
            test = result.test_outcome.value if result.test_outcome else None
            if outcome == "timeout" or test == "killed":
                killed += 1
            elif test == "incompetent" or outcome in ("exception", "abnormal"):
                incompetent += 1
            elif (mutation.operator_name, text) in equivalent:
                row["why"] = equivalent[(mutation.operator_name, text)]
                explained.append(row)
            else:
                survivors.append(row)
    counted = killed + len(survivors)
    summary = {"module": name, "path": ", ".join(paths_of(module)), "killed": killed,
               "survived": len(survivors), "equivalent": len(explained),
               "incompetent": incompetent,
               "score": round(100.0 * killed / counted, 1) if counted else 100.0,
               "survivors": survivors, "equivalents": explained}
    (WORK / name / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run(name: str, module: dict, defaults: dict) -> dict:
    started = time.monotonic()
    config, session = prepare(name, module, defaults)
    baseline = subprocess.run(test_command(module, defaults), shell=True, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if baseline.returncode != 0:
        print(baseline.stdout[-3000:])
        raise SystemExit(f"{name}: the tests fail without any mutant; fix them first")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "exec", str(config), str(session)],
                   cwd=ROOT, check=True, env=env)
    summary = summarise(name, module, session)
    summary["seconds"] = round(time.monotonic() - started)
    (WORK / name / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("modules", nargs="*", help="module names from modules.toml (all)")
    parser.add_argument("--ci", action="store_true", help="the CI subset; fail under the goal")
    parser.add_argument("--check", action="store_true", help="fail when a module is under goal")
    parser.add_argument("--list", action="store_true", help="list the modules and stop")
    parser.add_argument("--report", action="store_true",
                        help="print the last results again without running")
    args = parser.parse_args(argv)
    defaults, modules = load_modules()
    goal = float(defaults.get("goal", 90))
    names = args.modules or [n for n, m in modules.items() if m.get("ci") or not args.ci]
    unknown = [n for n in names if n not in modules]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(modules)}")
    if args.list:
        for name in names:
            m = modules[name]
            print(f"{name:12} {', '.join(paths_of(m))}  {' '.join(m['tests'])}"
                  f"{'  [ci]' if m.get('ci') else ''}")
        return 0
    results = []
    for name in names:
        if args.report:
            results.append(json.loads((WORK / name / "summary.json").read_text()))
        else:
            results.append(run(name, modules[name], defaults))
    print()
    for summary in results:
        for row in summary["survivors"]:
            print(f"--- SURVIVED {summary['module']} {row.get('file', '')}:{row['line_no']} "
                  f"{row['operator']}")
            print(row["diff"].rstrip())
    print()
    print("| module | file | mutants | killed | survived | equivalent | score |")
    print("|---|---|---:|---:|---:|---:|---:|")
    failed = []
    for s in results:
        total = s["killed"] + s["survived"] + s["equivalent"]
        print(f"| {s['module']} | `{s['path']}` | {total} | {s['killed']} | {s['survived']} "
              f"| {s['equivalent']} | {s['score']:.1f} % |")
        if s["score"] < goal:
            failed.append(s["module"])
    if args.ci or args.check:
        # modules at or above the goal "passed": a closing line any CI log reader understands
        print(f"mutation: {len(results) - len(failed)} passed, {len(failed)} failed")
        if failed:
            print(f"under the goal of {goal:.0f} %: {', '.join(failed)}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
