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
