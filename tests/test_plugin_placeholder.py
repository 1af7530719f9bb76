"""plugins/mediaproxy-placeholder, installed for real (``pip install --target``, found through
the ``mediaproxy`` entry-point group) and exercised by its own tests (real proxies, a real
origin, real images; disabled by name among them), run here in a fresh interpreter that sees
the installed copy, never the source tree."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugins" / "mediaproxy-placeholder"


def test_the_installed_placeholder_plugin_passes_its_own_tests(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(target), str(PLUGIN)], check=True, timeout=300)
    assert (target / "mediaproxy_placeholder" / "__init__.py").is_file()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    environ["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT)])
    # the tests are copied out of the source tree: the package they import is the installed one
    tests = tmp_path / "tests"
    shutil.copytree(PLUGIN / "tests", tests, ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(tmp_path), "-c", os.devnull, str(tests)],
                         cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
