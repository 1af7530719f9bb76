"""Third-party plugins: the example package is pip-installed for real, found through the
``mediaproxy`` entry-point group, and disabled by name. Plus the plugin manager's contract."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

from mediaproxy import hookimpl
from mediaproxy.config import load_config
from mediaproxy.manager import DEFAULT_PLUGINS, get_plugin_manager

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import io, json, sys
from PIL import Image
from mediaproxy.testing import ImageOrigin, make_image, start_proxy
origin = ImageOrigin({"/media/a.jpg": (200, make_image((200, 100), colour=(250, 20, 20)),
                                       "image/jpeg", [])})
running = start_proxy(origin=origin, load_entrypoints=True, environ=dict(
    (k, v) for k, v in __import__("os").environ.items() if k.startswith("MEDIAPROXY_")))
status, headers, body, _ = running.get("/media/a.jpg?w=50&grayscale=1&fmt=png")
pixel = Image.open(io.BytesIO(body)).convert("RGB").getpixel((10, 10))
plugins = sorted(n for n, p in running.runtime.pm.list_name_plugin() if p is not None)
print(json.dumps({"status": status, "header": headers.get("x-example-plugin"),
                  "pixel": pixel, "plugins": plugins}))
running.stop()
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(ROOT / "plugins" / "mediaproxy-example")],
                   check=True, timeout=300)
    return target


def probe(extra_path=None, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path or ""), str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=environ, check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_plugin_takes_effect_only_when_installed(installed_plugin):
    without = probe()
    assert without["status"] == 200 and without["header"] is None
    r, g, b = without["pixel"]
    assert r > 200 and g < 60           # still red: grayscale=1 is an unknown parameter
    assert "example" not in without["plugins"]

    with_plugin = probe(installed_plugin)
    assert with_plugin["header"] == "grayscale=1"
    r, g, b = with_plugin["pixel"]
    assert abs(r - g) < 4 and abs(g - b) < 4   # grey
    assert "example" in with_plugin["plugins"]


def test_the_plugin_disappears_when_disabled_by_name(installed_plugin):
    result = probe(installed_plugin, MEDIAPROXY_PLUGINS__DISABLED="example")
    assert result["header"] is None and "example" not in result["plugins"]
    r, g, b = result["pixel"]
    assert r > 200 and g < 60


def test_builtins_can_be_disabled_by_name():
    config = load_config(environ={"MEDIAPROXY_PLUGINS__DISABLED": "mediaproxy.builtin.cors"})
    pm = get_plugin_manager(config, load_entrypoints=False)
    names = {name for name, plugin in pm.list_name_plugin() if plugin is not None}
    assert "mediaproxy.builtin.cors" not in names
    assert set(DEFAULT_PLUGINS) - {"mediaproxy.builtin.cors"} <= names


def test_a_misspelt_hook_fails_at_start():
    class Typo:
        @hookimpl
        def mediaproxy_match_requets(self, request, runtime):
            return None

    with pytest.raises(pluggy.PluginValidationError):
        get_plugin_manager(load_config(environ={}), load_entrypoints=False,
                           extra_plugins=[Typo()])
