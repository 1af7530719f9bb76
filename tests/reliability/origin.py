"""
The backend of the reliability suite, run as its own process (so it can be SIGKILLed and
restarted on the same port like a real Django): ``python -m tests.reliability.origin --port P
--root DIR``. It serves the files under ``DIR`` (``/media/a.jpg`` is ``DIR/media/a.jpg``,
streamed with backpressure by twisted.web.static) and:

  POST /upload        reads the whole body, answers 200 with its length
  GET  /api/ok        a small JSON answer (the pass-through part of the normal traffic)
  GET  /media/gen/*   the file /media/normal/photo.jpg under any name: a source the proxy
                      has never fetched, for probes that must reach the backend
  GET  /_control?mode=normal|slow|flap|error&delay=S
                      how every other answer behaves from now on: ``slow`` answers after S
                      seconds, ``flap`` alternates 502 and the normal answer, ``error`` is 502

Only loopback; the runner starts and kills it (:class:`tests.reliability.harness.Origin`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.web import server, static
from twisted.web.resource import Resource


class Backend(Resource):
    isLeaf = True

    def __init__(self, root: Path):
        super().__init__()
        self.root = root.resolve()
        self.mode, self.delay, self.count = "normal", 0.0, 0

    def render_POST(self, request):
        if request.path == b"/_control":
            return self.render_GET(request)
        body = request.content.read()
        return self._json(request, 200, {"received": len(body)})

    def render_GET(self, request):
        path = request.path.decode("latin-1")
        if path == "/_control":
            args = {k.decode(): v[0].decode() for k, v in request.args.items()}
            self.mode = args.get("mode", "normal")
            self.delay = float(args.get("delay", "0"))
            self.count = 0
            return self._json(request, 200, {"mode": self.mode, "delay": self.delay})
        self.count += 1
        if self.mode == "error" or (self.mode == "flap" and self.count % 2):
            return self._json(request, 502, {"error": "bad_gateway"})
        if self.mode == "slow":
            reactor.callLater(self.delay, self._answer, request, path)
            return server.NOT_DONE_YET
        return self._serve(request, path)

    render_HEAD = render_GET

    def _answer(self, request, path):
        if request.finished or request.channel is None:
            return
        body = self._serve(request, path)
        if body is not server.NOT_DONE_YET:
            request.write(body)
            request.finish()

    def _serve(self, request, path):
        if path == "/api/ok":
            return self._json(request, 200, {"ok": True})
        if path.startswith("/media/gen/"):      # any name: a fresh source for the proxy
            path = "/media/normal/photo.jpg"
        target = (self.root / path.lstrip("/")).resolve()
        if self.root not in target.parents or not target.is_file():
            return self._json(request, 404, {"error": "not_found"})
        return static.File(str(target)).render(request)

    @staticmethod
    def _json(request, status, data):
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(data).encode()


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", required=True)
    args = p.parse_args(argv)
    site = server.Site(Backend(Path(args.root)))
    site.displayTracebacks = False
    site.log = lambda request: None          # no access log: the runner counts answers itself
    reactor.listenTCP(args.port, site, interface="127.0.0.1", backlog=1024)
    print("ready", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
