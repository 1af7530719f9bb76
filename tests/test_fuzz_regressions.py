"""
Every input the fuzz run ever found (tests/reliability/crashes/, see its README) and the fuzz
seed corpus, replayed through the fuzz target: ``imaging.probe`` then ``imaging.render`` must
each answer an image or an :class:`~mediaproxy.imaging.ImageError`, nothing else.
"""

from __future__ import annotations


import pytest

from .reliability.fuzz import CRASHES, seeds, target

FOUND = sorted(p for p in CRASHES.iterdir() if p.name != "README.md") if CRASHES.exists() else []
CASES = [pytest.param(data, id=f"seed-{name}") for name, data in seeds().items()] + [
    pytest.param(path.read_bytes(), id=path.name) for path in FOUND]


@pytest.mark.parametrize("data", CASES)
def test_the_decode_guard_answers_every_input_found_so_far(data):
    target(data)
