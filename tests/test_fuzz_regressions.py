"""
Every input the fuzz run found and that was fixed (tests/reliability/crashes/, see its README)
and the fuzz seed corpus, replayed through the fuzz target: ``imaging.probe`` then
``imaging.render`` must each answer an image or an :class:`~mediaproxy.imaging.ImageError`,
nothing else. An input found for its memory or time (``oom-``, ``timeout-``) is replayed in a
child process limited to 1 GiB of address space and 10 s of CPU, the budgets it broke.
"""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from .reliability.fuzz import CRASHES, ROOT, seeds, target

FIXED = sorted(p for p in CRASHES.iterdir() if p.name != "README.md") if CRASHES.exists() else []
BUDGETED = ("oom-", "timeout-", "slow-unit-")
CASES = [pytest.param(data, id=f"seed-{name}") for name, data in seeds().items()] + [
    pytest.param(path.read_bytes(), id=path.name) for path in FIXED
    if not path.name.startswith(BUDGETED)]


@pytest.mark.parametrize("data", CASES)
def test_the_decode_guard_answers_every_input_found_so_far(data):
    target(data)


def _budgets() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (10, 10))


SEEDS = seeds()
#: The seeds about cost (a JPEG of repeated scans, a GIF whose frame outgrows its screen), so
#: the budgeted replay always runs, and every fixed input found for its memory or time.
COSTLY = [pytest.param(SEEDS[name], id=f"seed-{name}") for name in ("rescan.jpg", "lying.gif")] + [
    pytest.param(path.read_bytes(), id=path.name) for path in FIXED
    if path.name.startswith(BUDGETED)]
REPLAY = ("import sys; from tests.reliability.fuzz import target; "
          "target(sys.stdin.buffer.read())")


@pytest.mark.parametrize("data", COSTLY)
def test_an_input_found_for_its_cost_is_answered_within_the_budgets(data):
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", REPLAY], input=data, cwd=ROOT,
                          preexec_fn=_budgets, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:].decode(errors="replace")
