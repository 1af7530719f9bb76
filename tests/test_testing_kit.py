"""The public test kit, ``mediaproxy.testing``: the example in docs/plugin_hooks.md runs as
written, the kit stands on installed code alone and ships in the wheel with ``py.typed``, and
its helpers do what the guide says (origin, images, failure messages, clean-up)."""

import ast
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mediaproxy.testing
from mediaproxy.config import ConfigError
from mediaproxy.testing import (
    File, ImageOrigin, assert_image, call_in_reactor, make_image, start_origin, start_proxy,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "plugin_hooks.md"


def guide_example() -> str:
    """The first python block of the guide's "Testing your plugin" section."""
    text = GUIDE.read_text()
    section = text[text.index("## Testing your plugin\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_example_runs_as_written(tmp_path):
    # Its own directory and a fresh pytest, as a plugin author would run it: no conftest of
    # ours, no tests/ package, only the installed mediaproxy.
    (tmp_path / "test_grayscale.py").write_text(guide_example())
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MEDIAPROXY_") and k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                          "-p", "no:cacheprovider", "test_grayscale.py"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout


def test_the_kit_imports_nothing_from_the_project_tests():
    kit = Path(mediaproxy.testing.__file__).parent
    for path in kit.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("tests"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("tests") for a in node.names), path


@pytest.mark.slow
def test_the_wheel_ships_the_kit_and_py_typed(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("mediaproxy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    kit = {f"mediaproxy/testing/{p.name}" for p in (ROOT / "mediaproxy" / "testing").glob("*.py")}
    assert "mediaproxy/py.typed" in names
    assert kit <= names


# -- the origin ----------------------------------------------------------------------------

def test_the_origin_serves_bytes_file_and_tuple_and_counts(live_reactor):
    png = make_image((20, 10), "PNG")
    origin = ImageOrigin({
        "/a.png": png,
        "/b.jpg": File(make_image((8, 8)), headers={"ETag": '"v1"', "X-Extra": "yes"}),
        "/c.bin": (503, b"busy", "text/plain", [("Retry-After", "5")]),
    })
    listening = start_origin(origin)
    try:
        def get(path, headers=None):
            conn = http.client.HTTPConnection("127.0.0.1", origin.port, timeout=10)
            try:
                conn.request("GET", path, headers=headers or {})
                r = conn.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            finally:
                conn.close()

        assert origin.url("/a.png") == f"http://127.0.0.1:{origin.port}/a.png"
        status, headers, body = get("/a.png")
        assert (status, headers["content-type"], body) == (200, "image/png", png)
        status, headers, _ = get("/b.jpg")
        assert (status, headers["content-type"], headers["x-extra"]) == (200, "image/jpeg", "yes")
        status, headers, body = get("/b.jpg", {"If-None-Match": '"v1"'})
        assert (status, headers["etag"], body) == (304, '"v1"', b"")
        status, headers, body = get("/c.bin", {"X-Probe": "1"})
        assert (status, headers["content-type"], headers["retry-after"], body) == (
            503, "text/plain", "5", b"busy")
        assert origin.headers_seen["/c.bin"]["x-probe"] == ["1"]
        assert get("/missing")[0] == 404
        assert origin.hits["/b.jpg"] == 2 and origin.hits["/missing"] == 1
    finally:
        call_in_reactor(listening.stopListening)


def test_start_proxy_serves_files_and_stops_with_its_origin(live_reactor):
    with start_proxy(files={"/media/a.jpg": make_image((400, 300))}) as proxy:
        response = proxy.get("/media/a.jpg?w=100&fmt=webp")
        status, headers, body, _ = response
        assert status == 200 and headers["content-type"] == "image/webp"
        assert_image(response, size=(100, 75), format="webp")
        assert proxy.url("/x") == f"http://127.0.0.1:{proxy.port}/x"
        assert proxy.json("/media/a.jpg?w=abc").data["error"]
        ports = proxy.port, proxy.origin.port
    proxy.stop()                                        # a second stop does nothing
    for port in ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_start_proxy_closes_the_origin_when_the_proxy_cannot_start(live_reactor):
    origin = ImageOrigin({})
    with pytest.raises(ConfigError):
        start_proxy(origin=origin, overrides={"limits": {"max_width": "not a number"}})
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", origin.port), timeout=2).close()


def test_start_proxy_takes_files_or_origin_not_both():
    with pytest.raises(TypeError):
        start_proxy(files={}, origin=ImageOrigin({}))


# -- images and waiting --------------------------------------------------------------------

def test_assert_image_says_what_arrived():
    png = make_image((10, 20), "PNG", colour=(0, 0, 255, 128), mode="RGBA")
    assert assert_image(png, size=(10, 20), format="png", mode="RGBA").size == (10, 20)
    with pytest.raises(AssertionError, match=r"expected 10x30 WEBP, got 10x20 PNG RGBA"):
        assert_image(png, size=(10, 30), format="WEBP")
    with pytest.raises(AssertionError, match=r"not an image .*17 bytes starting b'<html>"):
        assert_image(b"<html>oops</html>", size=(1, 1))


def test_make_image_takes_pillows_spelling_of_colour():
    from mediaproxy.testing import decode

    assert decode(make_image((4, 4), "PNG", color=(0, 90, 0))).getpixel((0, 0)) == (0, 90, 0)


def test_wait_for_returns_the_value_and_names_what_timed_out():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("not yet")
        return "ready"

    assert wait_for(flaky, 5, interval=0.001) == "ready"
    with pytest.raises(TimeoutError, match=r"the thing not reached in 0.05 s"):
        wait_for(lambda: None, 0.05, what="the thing")
    with pytest.raises(KeyError):
        wait_for(lambda: {}["missing"], 5)
