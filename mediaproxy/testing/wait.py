"""Polling until something is true, from the test thread: :func:`wait_for`."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str = "condition",
             interval: float = 0.02,
             ignore: tuple[type[BaseException], ...] = (OSError,)) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a true value, and return
    that value; after ``timeout`` seconds raise :class:`TimeoutError` naming ``what``.

    An exception in ``ignore`` (by default :class:`OSError`: a server not listening yet, a
    connection reset) counts as "not yet"; any other exception is raised at once. Call it from
    the test thread, never the reactor thread (it sleeps)::

        wait_for(lambda: origin.hits["/a.jpg"] == 1, 10, what="the origin fetched once")
    """
    deadline = time.monotonic() + timeout
    error: BaseException | None = None
    while True:
        try:
            value, error = predicate(), None
        except ignore as exc:
            value, error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            last = f" (last error: {error!r})" if error is not None else ""
            raise TimeoutError(f"{what} not reached in {timeout} s{last}")
        time.sleep(interval)
