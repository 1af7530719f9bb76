"""The documentation keeps up with the code: every hook and every config key is described."""

import inspect
from pathlib import Path

from mediaproxy import hookspecs
from mediaproxy.config import iter_settings
from mediaproxy.manager import DEFAULT_PLUGINS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def hook_names():
    return [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
            if name.startswith("mediaproxy_")]


def test_every_hook_has_a_section_in_the_plugin_guide():
    text = (DOCS / "plugin_hooks.md").read_text()
    missing = [name for name in hook_names() if f"### {name}\n" not in text]
    assert missing == []


def test_every_hook_spec_documents_its_thread():
    for name in hook_names():
        doc = getattr(hookspecs, name).__doc__ or ""
        assert "thread" in doc.lower(), name


def test_every_builtin_plugin_is_listed():
    text = (DOCS / "plugin_hooks.md").read_text()
    assert [name for name in DEFAULT_PLUGINS if f"`{name}`" not in text] == []


def test_every_config_key_is_in_the_operator_reference():
    text = (DOCS / "configuration.md").read_text()
    assert [key for key, _ in iter_settings() if f"`{key}`" not in text] == []


ROOT = DOCS.parent
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
LINK = __import__("re").compile(r"\]\(([^)\s]+)\)")
#: A path of this repository named in backticks: `plugins/...`, `tests/test_x.py`, ...
REPO_PATH = __import__("re").compile(
    r"`((?:docs|tests|plugins|conf|bench|mediaproxy|\.ci)/[\w./-]*)`")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, spaces to dashes, punctuation out."""
    import re

    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_every_link_between_the_docs_reaches_a_file_and_heading_that_exist():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_every_repository_path_the_docs_name_exists():
    missing = []
    for page in PAGES:
        for path in REPO_PATH.findall(page.read_text()):
            if "*" not in path and not (ROOT / path.rstrip("/")).exists():
                missing.append(f"{page.name}: {path}")
    assert missing == []


def test_every_field_and_method_of_the_values_is_in_the_plugin_guide():
    import attrs

    import mediaproxy
    from mediaproxy import models

    text = (DOCS / "plugin_hooks.md").read_text()
    section = text[text.index("## The values passed between hooks"):
                   text.index("## Lifecycle hooks")]
    missing = []
    for name, cls in vars(models).items():
        if not (isinstance(cls, type) and cls.__module__ == models.__name__):
            continue
        if not hasattr(mediaproxy, name):
            missing.append(f"{name} (not exported from mediaproxy)")
        names = [f.name for f in attrs.fields(cls)] if attrs.has(cls) else []
        names += [m for m, v in vars(cls).items() if callable(v) and not m.startswith("_")]
        if f"`{name}" not in section:
            missing.append(name)
        missing += [f"{name}.{n}" for n in names if f"`{n}" not in section]
    assert missing == []


def test_every_field_of_the_runtime_is_in_the_plugin_guide():
    import attrs

    from mediaproxy import Runtime

    text = (DOCS / "plugin_hooks.md").read_text()
    fields = [f.name for f in attrs.fields(Runtime) if not f.name.startswith("_")
              and f.name != "log"]
    assert [name for name in fields if f"`{name}`" not in text] == []
