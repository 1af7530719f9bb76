"""
``mediaproxy[django]`` in a fresh virtualenv holds the Django companion and nothing of the
proxy's weight: mediaproxy is installed without its dependencies, then exactly the requirements
its ``django`` extra declares (read from the installed metadata, so the extra itself is what is
tested), so Twisted and Pillow are not even installed. There the companion imports, renders its
template tags in a configured Django and signs a URL; ``sys.modules`` holds neither Twisted,
Pillow, pluggy nor attrs, and the signature is the one the proxy's own code computes for the
same URL (checked here, in the test's environment, with mediaproxy.builtin.signing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "fv-0123456789abcdef0123456789abcdef"

CHECK = r"""
import importlib.metadata, importlib.util, json, sys
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["mediaproxy.django"], MEDIAPROXY={"KEY": sys.argv[1]},
                   TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}])
django.setup()
import mediaproxy.django
from django.template import Context, Template
html = Template('{% load mediaproxy %}{% mediaproxy_url "/media/uploads/a.jpg" w=300 %}'
                ).render(Context())
print(json.dumps({
    "url": html.replace("&amp;", "&"),
    "loaded": sorted({m.split(".")[0] for m in sys.modules}
                     & {"twisted", "PIL", "pluggy", "attrs", "treq", "txredisapi"}),
    "installed": sorted(name for name in ("twisted", "PIL", "pluggy", "attrs")
                        if importlib.util.find_spec(name) is not None),
    "extra": [r for r in importlib.metadata.requires("mediaproxy") if "extra == \"django\"" in r],
}))
"""


@pytest.mark.slow
def test_the_django_extra_in_a_fresh_venv_loads_neither_twisted_nor_pillow(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis",
        ".mutation", ".reliability", "tests", "bench", "plugins", "docs"))
    venv = tmp_path / "venv"
    # no pip inside: this environment's pip installs into it (--python), which spares the
    # venv's own pip install; what lands in the venv is the same
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = str(venv / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q",
           "--disable-pip-version-check"]
    subprocess.run(pip + ["--no-deps", str(source)], check=True, timeout=300)
    requires = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print('\\n'.join("
                       "r.split(';')[0] for r in m.requires('mediaproxy') "
                       "if 'extra == \"django\"' in r))"],
        check=True, capture_output=True, text=True, timeout=60).stdout.split()
    assert requires == ["Django>=4.2"]
    subprocess.run(pip + requires, check=True, timeout=300)

    out = subprocess.run([python, "-c", CHECK, KEY], check=True, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    found = json.loads(out.stdout)
    assert found["loaded"] == []
    assert found["installed"] == []
    assert found["extra"] == ['Django>=4.2; extra == "django"']

    from mediaproxy.builtin.signing import sign_url
    expected = sign_url("/media/uploads/a.jpg?w=300", "query", frozenset({"w"}), KEY)
    assert found["url"] == expected
