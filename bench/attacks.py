#!/usr/bin/env python3
"""The imaging attacks of issue 12 against a real proxy: status, error code, seconds and the
proxy process's peak RSS, one fresh process per attack (so one's memory never hides
another's).

    .venv/bin/python bench/attacks.py                      # this checkout
    .venv/bin/python bench/attacks.py --code /tmp/main     # another checkout (git archive)
    .venv/bin/python bench/attacks.py --only scans,lying   # some of them

Each attack runs the kit's in-process proxy (``start_proxy``) and a real origin on loopback;
the peak is the process's ``VmHWM`` after the request minus its ``VmRSS`` before it (the
high-water mark reset through ``/proc/self/clear_refs``). Warning: on an unprotected
checkout some attacks take gigabytes (the GIF enlarged to WebP took 7.3 GB); ``--skip``
leaves them out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _encode(image, fmt, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _flat_animation(fmt: str, count: int, size) -> bytes:
    from PIL import Image
    frames = [Image.new("RGB", size, ((i * 40) % 256, 100, 200)) for i in range(count)]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100,
                   loop=0)


def _lying_gif() -> bytes:
    sys.path.insert(0, str(ROOT / "tests"))
    from imaging_attacks import lying_gif    # the tests' builders, one definition
    return lying_gif()


def _many_scans() -> bytes:
    sys.path.insert(0, str(ROOT / "tests"))
    from imaging_attacks import progressive_jpeg, with_repeated_scan
    return with_repeated_scan(progressive_jpeg((2000, 1500), flat=True), 5000)


#: name -> (file builder, path, query)
ATTACKS = {
    "gif-enlarged": (lambda: _flat_animation("GIF", 24, (400, 300)), "/media/a.gif",
                     "w=6000&enlarge=1"),
    "gif-enlarged-webp": (lambda: _flat_animation("GIF", 24, (400, 300)), "/media/a.gif",
                          "w=6000&enlarge=1&fmt=webp"),
    "lying-gif": (_lying_gif, "/media/lying.gif", "w=50"),
    "webp-enlarged": (lambda: _flat_animation("WEBP", 24, (400, 300)), "/media/a.webp",
                      "w=5000&enlarge=1"),
    "webp-enlarged-webp": (lambda: _flat_animation("WEBP", 24, (400, 300)), "/media/a.webp",
                           "w=5000&enlarge=1&fmt=webp"),
    "jpeg-5000-scans": (_many_scans, "/media/scans.jpg", "w=200"),
}


def _status(key: str) -> int:
    """A /proc/self/status figure in bytes (the tests' memory probe reads it the same way)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from memory_probe import _status as status
    return status(key)


def one(name: str) -> dict:
    """Run attack ``name`` in this process (a child of :func:`main`)."""
    from mediaproxy.testing import ImageOrigin, start_proxy
    build, path, query = ATTACKS[name]
    data = build()
    with start_proxy(origin=ImageOrigin({path: (200, data, "application/octet-stream", [])}),
                     overrides={"ratelimit": {"enabled": False}}) as proxy:
        proxy.get("/media/warm.gif")                        # load the code paths first
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status("VmRSS:")
        started = time.monotonic()
        status, headers, body, _ = proxy.get(f"{path}?{query}", timeout=120)
        seconds = time.monotonic() - started
        peak = _status("VmHWM:") - base
        error = headers.get("x-placeholder")
        if headers.get("content-type", "").startswith("application/json"):
            error = json.loads(body).get("error")
        result = {"attack": name, "bytes": len(data), "status": status, "error": error,
                  "seconds": round(seconds, 1), "peak_mib": round(peak / 2**20)}
        # printed before the proxy stops: an abandoned transform may keep it from stopping
        # (and then the process's peak goes on growing: see "peak_mib_at_exit")
        print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", default=str(ROOT), help="the checkout whose mediaproxy runs")
    parser.add_argument("--only", default="", help="comma-separated attack names")
    parser.add_argument("--skip", default="", help="comma-separated attack names")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        try:
            one(args.one)
        finally:
            print(json.dumps({"peak_mib_at_exit": round(_status("VmHWM:") / 2**20)}),
                  flush=True)
        return
    names = [n for n in (args.only.split(",") if args.only else ATTACKS)
             if n not in args.skip.split(",")]
    env = dict(os.environ, PYTHONPATH=args.code, PYTHONDONTWRITEBYTECODE="1")
    for name in names:
        done = subprocess.run([sys.executable, __file__, "--one", name], env=env,
                              capture_output=True, text=True, timeout=600)
        lines = [json.loads(line) for line in done.stdout.strip().splitlines()
                 if line.startswith("{")]
        result = {k: v for line in lines for k, v in line.items()} or {
            "attack": name, "crashed": done.returncode, "stderr": done.stderr[-300:]}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
