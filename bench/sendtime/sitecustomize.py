"""Measurement only, for ``bench/overload.py --send-times``: loaded by the proxy's processes
(this folder on their PYTHONPATH) when ``OVERLOAD_SEND_TIMES`` names a directory. For every
response to a request outside ``/media/uploads/b/`` (the overload's never-seen sources), i.e.
the hit prober's cache hits, it appends to ``$OVERLOAD_SEND_TIMES/<pid>`` one line: the
monotonic time, then the wall and the reactor thread's CPU milliseconds from
``Request.finish()`` to the moment the response's last byte was handed to the kernel (the work
the reactor did in between is what the hit waited for). Patches Twisted's ``Request.finish``
and ``tcp.Connection.doWrite``; nothing else."""

import os
import time

_DIR = os.environ.get("OVERLOAD_SEND_TIMES")
if _DIR:
    from twisted.internet import tcp
    from twisted.web import http

    _finish = http.Request.finish
    _do_write = tcp.Connection.doWrite
    _out = []

    def _buffered(transport) -> bool:
        return bool(transport._tempDataLen or len(transport.dataBuffer) > transport.offset)

    def _record(mark) -> None:
        if not _out:
            _out.append(open(os.path.join(_DIR, str(os.getpid())), "a", buffering=1))
        now = time.monotonic()
        _out[0].write(f"{now:.4f} {1000 * (now - mark[0]):.3f} "
                      f"{1000 * (time.thread_time() - mark[1]):.3f}\n")

    def finish(self):
        channel = getattr(self, "channel", None)
        transport = getattr(channel, "transport", None)
        mark = None
        if isinstance(transport, tcp.Connection) and not self.uri.startswith(b"/media/uploads/b/"):
            mark = (time.monotonic(), time.thread_time())
        result = _finish(self)
        if mark is not None:
            if _buffered(transport):
                transport._overload_mark = mark
            else:
                _record(mark)
        return result

    def doWrite(self):
        result = _do_write(self)
        mark = self.__dict__.get("_overload_mark")
        if mark is not None and not _buffered(self):
            del self._overload_mark
            _record(mark)
        return result

    http.Request.finish = finish
    tcp.Connection.doWrite = doWrite
