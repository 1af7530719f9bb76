"""
The plugins' suite (``tox -e plugins``): install every plugin of ``plugins/`` into the running
environment (``pip install plugins/NAME``: not editable, with its dependencies), then run the
tests that exercise them: tests/test_plugins.py, tests/test_s3.py (a real SeaweedFS) and every
tests/test_plugin_*.py (each plugin's own, e.g. the placeholder plugin's, which also runs the
tests shipped in plugins/mediaproxy-placeholder/tests). Arguments go to pytest.

Except the example plugin: tests/test_plugins.py installs it itself (``pip install --target``)
and checks that it has no effect when it is not installed, so it must not be in the
environment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: installed by their own tests, which also check the proxy without them
SELF_INSTALLED = {"mediaproxy-example"}


def main(argv: list[str]) -> int:
    plugins = sorted(str(p) for p in (ROOT / "plugins").iterdir()
                     if (p / "pyproject.toml").exists() and p.name not in SELF_INSTALLED)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *plugins], check=True)
    tests = ["tests/test_plugins.py", "tests/test_s3.py",
             *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_plugin_*.py"))]
    return subprocess.run([sys.executable, "-m", "pytest", *tests, *argv], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
