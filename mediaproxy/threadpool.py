"""
Thread pools that leave no garbage cycle behind a call.

Twisted's :meth:`ThreadPool.callInThreadWithCallback <twisted.python.threadpool.ThreadPool>`
wraps every call in a local function that refers to itself (it clears its own attributes
once the work is done), so each call leaves a function, its cell, its attribute dict and its
closure in a reference cycle that only Python's cyclic garbage collector frees. Every disk
lookup, inspection and render goes through a pool: under a cold overload that was some 1,500
cycles a second per process, the collections they trigger stop the whole process, and a
cache hit waiting on the reactor waits for them (docs/performance.md, "Collections").

:class:`ThreadPool` is Twisted's pool with that one method written without the cycle (the same
context, the same ``onResult(ok, result)``, a :class:`~twisted.python.failure.Failure` on an
exception). :func:`without_cycles` gives a pool Twisted made (the reactor's own, which resolves
host names and runs the inspections) the same method.

Core room: imports nothing of mediaproxy.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.python import context, threadpool
from twisted.python.failure import Failure

__all__ = ["ThreadPool", "without_cycles"]


class _Call:
    """One call for a pool thread: runs ``func`` in the caller's context and hands the result
    to ``on_result``; it refers to nothing that refers back to it, so it is freed by reference
    counting as soon as the thread lets go of it."""

    __slots__ = ("ctx", "func", "args", "kw", "on_result")

    def __init__(self, ctx: dict, func: Callable[..., Any], args: tuple, kw: dict,
                 on_result: Callable[[bool, Any], object] | None):
        self.ctx, self.func, self.args, self.kw, self.on_result = ctx, func, args, kw, on_result

    def __call__(self) -> None:
        try:
            result = context.call(self.ctx, self.func, *self.args, **self.kw)
            ok = True
        except BaseException:
            result = Failure()
            ok = False
        self.func = self.args = self.kw = None   # type: ignore[assignment]
        on_result, self.on_result = self.on_result, None
        if on_result is not None:
            on_result(ok, result)


class ThreadPool(threadpool.ThreadPool):
    """Twisted's thread pool, a call leaving no reference cycle (see the module doc)."""

    def callInThreadWithCallback(self, onResult, func, *args, **kw) -> None:  # noqa: N802
        if self.joined:
            return
        ctx = context.theContextTracker.currentContext().contexts[-1]
        self._team.do(_Call(ctx, func, args, kw, onResult))


def without_cycles(pool: threadpool.ThreadPool) -> threadpool.ThreadPool:
    """``pool`` (a Twisted :class:`~twisted.python.threadpool.ThreadPool`, such as the
    reactor's) with :class:`ThreadPool`'s method: its class becomes :class:`ThreadPool`, which
    adds no state; a pool of another class is left alone."""
    if type(pool) is threadpool.ThreadPool:
        pool.__class__ = ThreadPool
    return pool
