"""
The global reactor in a background thread, and a way to call into it from the test thread.

Tests that talk to the proxy over real sockets (``http.client``, plain sockets) run in the test
thread while the global reactor runs in a daemon thread::

    reactor = reactor_thread()                       # starts it once per process
    port = call_in_reactor(reactor.listenTCP, 0, site, interface="127.0.0.1")
    result = call_in_reactor(some_function_returning_a_deferred, timeout=5)

``call_in_reactor`` runs the function in the reactor thread, waits for its Deferred and returns
the result or raises the failure's exception in the calling thread. Everything that touches
Twisted objects must go through it (or ``reactor.callFromThread``).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python import threadable
from twisted.python.failure import Failure

_lock = threading.Lock()
_thread: threading.Thread | None = None


def reactor_thread(timeout: float = 10.0):
    """Start the global reactor in a daemon thread (once per process) and return it."""
    global _thread
    from twisted.internet import reactor

    with _lock:
        if _thread is None:
            running = threading.Event()
            reactor.callWhenRunning(running.set)
            _thread = threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False},
                name="twisted-reactor", daemon=True)
            _thread.start()
            if not running.wait(timeout):
                raise RuntimeError("the reactor did not start")
    return reactor


def stop_reactor_thread(timeout: float = 10.0) -> None:
    """Stop the reactor started by :func:`reactor_thread` (it cannot be started again)."""
    global _thread
    from twisted.internet import reactor

    with _lock:
        if _thread is None:
            return
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]  # the default reactor has it
        _thread.join(timeout)
        _thread = None


def call_in_reactor(fn: Callable[..., Any], *args: Any, timeout: float = 10.0,
                    **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` in the reactor thread and wait for its result.

    A returned Deferred is waited for. Its failure is raised here. After ``timeout`` seconds the
    Deferred is cancelled and :class:`TimeoutError` raised.
    """
    if threadable.isInIOThread():
        raise RuntimeError("call_in_reactor() called from the reactor thread would deadlock")
    reactor = reactor_thread()
    done = threading.Event()
    outcome: list[Any] = []
    pending: list[Deferred] = []

    def store(result):
        outcome.append(result)
        done.set()

    def run():
        d = maybeDeferred(fn, *args, **kwargs)
        pending.append(d)
        d.addBoth(store)

    reactor.callFromThread(run)
    if not done.wait(timeout):
        def cancel_all():
            for d in pending:
                d.cancel()

        reactor.callFromThread(cancel_all)
        done.wait(1.0)
        raise TimeoutError(f"{getattr(fn, '__name__', fn)!r} did not finish in {timeout} s")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
