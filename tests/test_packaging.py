"""Installing for real: in fresh virtualenvs, ``pip install -e .`` and ``pip install .`` each
give a ``twistd mediaproxy`` plugin and a ``mediaproxy`` script, and ``twistd -n mediaproxy``
configured by the environment alone serves a resized image from a real origin."""

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from mediaproxy.testing import ImageOrigin, make_image, start_origin

from .redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_for(url, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, dict(response.headers), response.read()
        except OSError:
            time.sleep(0.2)   # polling a starting process; bounded by the deadline
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def origin_port(live_reactor):
    origin = ImageOrigin({"/media/uploads/p.jpg": (200, make_image((640, 480)), "image/jpeg",
                                                   [])})
    port = start_origin(origin)
    yield port.getHost().port


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory):
    # A copy without build leftovers, so the two installs do not share a build directory.
    dest = tmp_path_factory.mktemp("src") / "mediaproxy"
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("editable", [True, False], ids=["pip-install-e", "pip-install"])
def test_fresh_venv_install_then_twistd_serves(tmp_path, source_copy, origin_port, editable):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    target = ["-e", str(source_copy)] if editable else [str(source_copy)]
    subprocess.run(pip + target, check=True, timeout=600)

    version = subprocess.run([str(venv / "bin" / "mediaproxy"), "--version"], check=True,
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("mediaproxy ")

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    env.pop("PYTHONPATH", None)
    env.update(MEDIAPROXY_BACKEND__URL=f"http://127.0.0.1:{origin_port}",
               MEDIAPROXY_SERVER__LISTEN=f"tcp:{port}:interface=127.0.0.1")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen([str(venv / "bin" / "twistd"), "-n", "--pidfile=", "mediaproxy"],
                            cwd=run_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        status, headers, body = wait_for(
            f"http://127.0.0.1:{port}/media/uploads/p.jpg?w=160&fmt=webp", proc)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert status == 200, output
    image = Image.open(io.BytesIO(body))
    assert (image.format, image.size) == ("WEBP", (160, 120))
    assert "mediaproxy" in output
