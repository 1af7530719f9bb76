"""check-config and the start list the loaded plugins; an installed plugin that cannot load
stops them with one line naming its entry point and the setting that leaves it out.

The plugins here are real entry points: a ``*.dist-info`` directory with ``entry_points.txt``
and the module beside it, in a temporary directory put on the ``PYTHONPATH`` of a subprocess,
which is how an installed distribution is found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.logger import globalLogPublisher

from mediaproxy import __version__, hookimpl
from mediaproxy.config import ConfigError, load_config
from mediaproxy.manager import DEFAULT_PLUGINS
from mediaproxy.tap import log_start
from mediaproxy.testing.runtime import make_runtime

ROOT = Path(__file__).resolve().parent.parent

GOOD = '''
from attrs import frozen
from mediaproxy import hookimpl, setting

@frozen
class StampSettings:
    text: str = setting("", "str", "The text to stamp.")
    size: int = setting(24, "int", "Font size.")
    token: str = setting("", "str", "A token.", secret="value")

class Plugin:
    @hookimpl
    def mediaproxy_settings(self):
        return {"stamp": StampSettings}

plugin = Plugin()
'''

BROKEN = "import nope_not_installed\nplugin = object()\n"


def install(where: Path, name: str, module: str, source: str, version: str) -> None:
    """A distribution ``<name>-plugin`` with the entry point ``name = module:plugin``."""
    (where / f"{module}.py").write_text(source)
    info = where / f"{name}_plugin-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\n"
                                   f"Version: {version}\n")
    (info / "entry_points.txt").write_text(f"[mediaproxy]\n{name} = {module}:plugin\n")


def installed() -> list[str]:
    """The lines of the plugins installed in this environment (``./dev setup`` installs some of
    plugins/ editable, tox all of them), as check-config lists them, in the order it finds
    them: the test's own come before these on the PYTHONPATH."""
    from importlib.metadata import entry_points

    return [f"#   {ep.name} {ep.dist.version} (entry point {ep.name} = {ep.value} "
            f"({ep.dist.name}))" for ep in entry_points(group="mediaproxy")]


def mediaproxy(tmp_path, *args, env=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    environ.update(PYTHONPATH=str(tmp_path / "site"), **(env or {}))
    return subprocess.run([sys.executable, "-m", "mediaproxy", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def site(tmp_path):
    (tmp_path / "site").mkdir()
    return tmp_path / "site"


BROKEN_LINE = ("configuration error: plugin 'broken' cannot load: entry point broken = "
               "broken_mod:plugin (broken-plugin 1.0): ModuleNotFoundError: No module named "
               "'nope_not_installed'; leave it out with plugins.disabled = [\"broken\"] or "
               "MEDIAPROXY_PLUGINS__DISABLED=broken\n")


def test_check_config_lists_every_loaded_plugin_with_its_version_and_origin(tmp_path, site):
    install(site, "good", "good_mod", GOOD, "2.0")
    config = tmp_path / "m.toml"
    config.write_text('[stamp]\ntext = "(c) ACME"\ntoken = "hunter2"\n')
    done = mediaproxy(tmp_path, "check-config", "--config", str(config),
                      env={"MEDIAPROXY_S3_ENDPOINT": "http://h"})
    assert (done.returncode, done.stderr) == (
        0, "warning: MEDIAPROXY_S3_ENDPOINT: not a setting nor a variable mediaproxy reads, "
           "ignored (did you mean MEDIAPROXY_S3__ENDPOINT?)\n")
    head = done.stdout.split("\n\n")[0].splitlines()
    assert head == (["# plugins loaded (name, version, from):"]
                    + [f"#   {name} {__version__} (built-in)" for name in DEFAULT_PLUGINS]
                    # in the order of the path: PYTHONPATH before site-packages
                    + ["#   good 2.0 (entry point good = good_mod:plugin (good-plugin))"]
                    + installed())
    # the plugin's section is printed with the rest, its secret hidden
    assert done.stdout.endswith('[stamp]\ntext = "(c) ACME"\nsize = 24\n'
                                'token = "<redacted>"\n')


def test_a_bad_value_of_a_plugin_section_names_the_file_and_line(tmp_path):
    # in process: the plugin object as its entry point would give it
    namespace: dict = {}
    exec(compile(GOOD, "good_mod.py", "exec"), namespace)
    config = tmp_path / "m.toml"
    config.write_text('[stamp]\ntext = "x"\nsise = 12\n')
    with pytest.raises(ConfigError) as raised:
        load_config(config, environ={}, plugins=[namespace["plugin"]], load_entrypoints=False)
    assert str(raised.value) == (f"{config}:3: stamp.sise: unknown key (did you mean "
                                 "stamp.size?)")
    config.write_text('[stamp]\ntext = "x"\nsize = "big"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(config, environ={}, plugins=[namespace["plugin"]], load_entrypoints=False)
    assert str(raised.value) == f'{config}:3: stamp.size: must be an integer, got "big"'
    with pytest.raises(ConfigError) as raised:   # no plugin declares it
        load_config(config, environ={}, load_entrypoints=False)
    assert str(raised.value) == f"{config}:1: stamp: unknown key (see docs/configuration.md)"


def test_a_plugin_that_cannot_load_fails_check_config_with_one_line(tmp_path, site):
    install(site, "broken", "broken_mod", BROKEN, "1.0")
    done = mediaproxy(tmp_path, "check-config")
    assert (done.returncode, done.stdout, done.stderr) == (2, "", BROKEN_LINE)


def test_disabled_by_the_setting_it_names_the_broken_plugin_is_not_even_imported(tmp_path,
                                                                                 site):
    install(site, "broken", "broken_mod", BROKEN, "1.0")
    done = mediaproxy(tmp_path, "check-config", env={"MEDIAPROXY_PLUGINS__DISABLED": "broken"})
    assert (done.returncode, done.stderr) == (0, "")
    assert [line for line in done.stdout.split("\n\n")[0].splitlines()
            if "built-in" not in line] == [
        "# plugins loaded (name, version, from):", *installed()]


def test_the_proxy_does_not_start_with_a_plugin_that_cannot_load(tmp_path, site):
    install(site, "broken", "broken_mod", BROKEN, "1.0")
    done = mediaproxy(tmp_path, "run", "--listen", "tcp:0:interface=127.0.0.1")
    assert (done.returncode, done.stdout, done.stderr) == (2, "", BROKEN_LINE)


class Extra:
    @hookimpl
    def mediaproxy_event(self, event):
        pass


def test_the_start_logs_the_plugins_in_one_line_and_warns_about_unknown_variables(
        monkeypatch):
    monkeypatch.setenv("MEDIAPROXY_BACKEND_URL", "http://h")
    runtime = make_runtime(plugins=[Extra()])
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        log_start(runtime)
    finally:
        globalLogPublisher.removeObserver(events.append)
    ours = [e for e in events if e.get("log_namespace") == "mediaproxy"]
    assert [e["log_format"] for e in ours] == ["{count} plugins loaded: {names}",
                                               "environment: {warning}"]
    listed = ours[0]["plugins"]
    assert listed[:len(DEFAULT_PLUGINS)] == [
        {"name": name, "version": __version__, "from": "built-in"} for name in DEFAULT_PLUGINS]
    assert [(p["version"], p["from"]) for p in listed[len(DEFAULT_PLUGINS):]] == [
        ("-", "registered by the program")]
    assert ours[0]["count"] == len(DEFAULT_PLUGINS) + 1
    assert ours[1]["warning"] == ("MEDIAPROXY_BACKEND_URL: not a setting nor a variable "
                                  "mediaproxy reads, ignored (did you mean "
                                  "MEDIAPROXY_BACKEND__URL?)")


def test_a_reload_reads_the_plugin_sections_again_and_refuses_a_bad_one(tmp_path,
                                                                        monkeypatch):
    from twisted.internet.testing import MemoryReactorClock

    from mediaproxy.tap import build_runtime, reload_config

    for name in [n for n in os.environ if n.startswith("MEDIAPROXY_")]:
        monkeypatch.delenv(name)   # SIGHUP reads the process environment too
    namespace: dict = {}
    exec(compile(GOOD, "good_mod.py", "exec"), namespace)
    plugin = namespace["plugin"]
    path = tmp_path / "m.toml"
    path.write_text('[stamp]\ntext = "a"\n')
    config = load_config(path, plugins=[plugin], load_entrypoints=False)
    runtime = build_runtime(config, MemoryReactorClock(), extra_plugins=[plugin],
                            load_entrypoints=False)
    assert runtime.config.plugin_settings("stamp").text == "a"
    path.write_text('[stamp]\ntext = "b"\n')
    reload_config(runtime, path)
    assert runtime.config.plugin_settings("stamp").text == "b"
    path.write_text('[stamp]\ntext = "c"\n\nsize = 0.5\n')
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reload_config(runtime, path)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert runtime.config.plugin_settings("stamp").text == "b"   # refused whole
    assert [e["error"] for e in events if "error" in e] == [
        f"{path}:4: stamp.size: must be an integer, got 0.5"]
