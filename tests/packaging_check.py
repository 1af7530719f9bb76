"""
The packaging check (``tox -e packaging``, ``./dev packaging``, CI): what a user installs from
the built artefacts works, without the checkout.

1. Build mediaproxy's wheel and sdist (``python -m build``), and each plugin's wheel
   (``plugins/*``).
2. The sdist carries what a rebuild and a reader need: LICENSE, README.md, setup.cfg,
   pyproject.toml, the package with ``py.typed``, the Twisted plugin, the shipped configuration
   (``conf/``: the defaults file, the systemd unit, the Grafana and Prometheus files) and the
   documentation (``docs/``, which the README links to); not the tests (the suite needs the
   whole checkout). The wheel carries the package,
   ``py.typed`` and ``twisted/plugins/mediaproxy_plugin.py``, and its metadata the licence
   and the Project-URLs.
3. Install the wheel, then the plugins' wheels, into a FRESH virtual environment (not editable;
   dependencies from the configured index), and from a folder outside the checkout:
   ``mediaproxy --version`` prints the built version; ``twistd --help`` lists ``mediaproxy``;
   ``mediaproxy check-config --defaults`` succeeds; every plugin's entry point loads; and the
   installed proxy serves: ``mediaproxy demo`` on free loopback ports answers a resized JPEG.

Run as ``python tests/packaging_check.py [--keep DIR]``; prints each step with its time and
exits 1 at the first failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
#: What the sdist must hold (paths under its top folder).
SDIST_MUST = ("LICENSE", "README.md", "setup.cfg", "pyproject.toml", "mediaproxy/__init__.py",
              "mediaproxy/py.typed", "twisted/plugins/mediaproxy_plugin.py",
              "conf/mediaproxy.toml", "conf/mediaproxy.service", "docs/configuration.md")
WHEEL_MUST = ("mediaproxy/__init__.py", "mediaproxy/py.typed", "mediaproxy/cli.py",
              "twisted/plugins/mediaproxy_plugin.py")
METADATA_MUST = ("License-File: LICENSE", "Project-URL: Documentation, ",
                 "Project-URL: Source, ", "Project-URL: Issues, ", "Project-URL: Changelog, ")
STEP_TIMEOUT = 600


class Failed(Exception):
    pass


def step(what: str):
    print(f"[packaging] {what}", flush=True)


def run(*cmd, cwd=None, env=None, timeout=STEP_TIMEOUT) -> str:
    started = time.monotonic()
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise Failed(f"{' '.join(map(str, cmd))} exited {done.returncode} after {took:.1f} s"
                     f"\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"[packaging]   ok in {took:.1f} s: {' '.join(map(str, cmd))[:120]}", flush=True)
    return done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def version() -> str:
    namespace: dict = {}
    text = (ROOT / "mediaproxy" / "__init__.py").read_text()
    line = next(line for line in text.splitlines() if line.startswith("__version__"))
    exec(line, namespace)
    return namespace["__version__"]


def check_sdist(sdist: Path) -> None:
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    missing = [name for name in SDIST_MUST if name not in names]
    if missing:
        raise Failed(f"{sdist.name} lacks {missing}")
    stray = sorted(name for name in names if "__pycache__" in name or name.endswith(".pyc")
                   or name.startswith("tests/"))
    if stray:
        raise Failed(f"{sdist.name} carries compiled files or tests: {stray[:5]}")


def check_wheel(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(metadata_name).decode()
    missing = [name for name in WHEEL_MUST if name not in names]
    if missing:
        raise Failed(f"{wheel.name} lacks {missing}")
    absent = [line for line in METADATA_MUST if line not in metadata]
    if absent:
        raise Failed(f"{wheel.name}'s METADATA lacks {absent}")


def serve_demo(venv_bin: Path, workdir: Path) -> None:
    """The installed ``mediaproxy demo`` answers a resized JPEG (one worker, free ports)."""
    port, origin_port = free_port(), free_port()
    env = {**os.environ, "MEDIAPROXY_SERVER__WORKERS": "1", "MEDIAPROXY_MONITORING__LISTEN": ""}
    proc = subprocess.Popen([venv_bin / "mediaproxy", "demo", "--port", str(port),
                             "--origin-port", str(origin_port)], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/media/uploads/sample.jpg?w=120&fmt=jpeg"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    body, ctype = answer.read(), answer.headers["content-type"]
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    raise Failed(f"the installed demo did not serve {url}:\n{out[-3000:]}") from None
                time.sleep(0.5)
        # decoded by the fresh environment's Pillow (this script needs nothing but the stdlib)
        (workdir / "answer.jpg").write_bytes(body)
        seen = run(venv_bin / "python", "-c", "from PIL import Image\n"
                   "with Image.open('answer.jpg') as image: print(image.format, image.width)",
                   cwd=workdir).split()
        if (ctype, seen) != ("image/jpeg", ["JPEG", "120"]):
            raise Failed(f"the demo answered {ctype} {seen}")
        print(f"[packaging]   ok: the installed demo served {url} ({len(body)} bytes, a JPEG "
              f"120 px wide)", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, default=None,
                        help="build and install under this folder and keep it (default: a "
                             "temporary folder, removed)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="mediaproxy-packaging-"))
    base.mkdir(parents=True, exist_ok=True)
    dist, venv, outside = base / "dist", base / "venv", base / "elsewhere"
    shutil.rmtree(dist, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    outside.mkdir(exist_ok=True)
    started = time.monotonic()
    try:
        step("build mediaproxy's sdist and wheel")
        run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", dist, ROOT)
        expected = version()
        sdist = dist / f"mediaproxy-{expected}.tar.gz"
        wheel = dist / f"mediaproxy-{expected}-py3-none-any.whl"
        if not (sdist.exists() and wheel.exists()):
            raise Failed(f"expected {sdist.name} and {wheel.name}, built "
                         f"{sorted(p.name for p in dist.iterdir())}")
        check_sdist(sdist)
        check_wheel(wheel)
        step("build each plugin's wheel")
        plugin_wheels = []
        for plugin in PLUGINS:
            out = dist / plugin.name
            run(sys.executable, "-m", "build", "--wheel", "--outdir", out, plugin)
            plugin_wheels += sorted(out.glob("*.whl"))
        if len(plugin_wheels) != len(PLUGINS):
            raise Failed(f"{len(PLUGINS)} plugins, {len(plugin_wheels)} wheels")

        step("install the wheels into a fresh virtual environment")
        run(sys.executable, "-m", "venv", venv)
        bin_ = venv / "bin"
        run(bin_ / "python", "-m", "pip", "install", "-q", wheel)
        run(bin_ / "python", "-m", "pip", "install", "-q", *plugin_wheels)

        step("use it from outside the checkout")
        where = run(bin_ / "python", "-c", "import mediaproxy; print(mediaproxy.__file__)",
                    cwd=outside).strip()
        if not where.startswith(str(venv)):
            raise Failed(f"mediaproxy imported from {where}, not the fresh environment")
        said = run(bin_ / "mediaproxy", "--version", cwd=outside).strip()
        if said != f"mediaproxy {expected}":
            raise Failed(f"mediaproxy --version said {said!r}, expected 'mediaproxy {expected}'")
        helptext = run(bin_ / "twistd", "--help", cwd=outside)
        if not any(line.split()[:1] == ["mediaproxy"] for line in helptext.splitlines()):
            raise Failed(f"twistd --help does not list mediaproxy:\n{helptext[-2000:]}")
        run(bin_ / "mediaproxy", "check-config", "--defaults", cwd=outside)
        names = run(bin_ / "python", "-c",
                    "from importlib.metadata import entry_points\n"
                    "for ep in entry_points(group='mediaproxy'):\n"
                    "    ep.load(); print(ep.name)", cwd=outside).split()
        if len(names) != len(PLUGINS):
            raise Failed(f"{len(PLUGINS)} plugins installed, entry points {names}")
        serve_demo(bin_, outside)
    except (Failed, subprocess.TimeoutExpired) as e:
        print(f"[packaging] FAILED: {e}", flush=True)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"[packaging] all good in {time.monotonic() - started:.0f} s: sdist, wheel, "
          f"{len(PLUGINS)} plugin wheels, fresh install ({', '.join(sorted(names))})",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
