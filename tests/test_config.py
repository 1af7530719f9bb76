"""The configuration schema: TOML, environment overrides, validation naming the key."""

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaproxy.config import (
    Config, ConfigError, config_from_dict, defaults_toml, env_overrides, load_config, to_toml,
)

from .strategies import configs

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_work_without_any_file_or_environment():
    config = load_config(environ={}, load_entrypoints=False)
    assert config == Config()
    assert config.server.listen == ("tcp:8080",)
    assert config.backend.url == "http://127.0.0.1:8000"


def test_environment_overrides_nested_keys_and_parses_sizes_and_lists():
    config = load_config(environ={
        "MEDIAPROXY_BACKEND__URL": "http://127.0.0.1:9000",
        "MEDIAPROXY_CACHE__MEMORY__MAX_BYTES": "64MiB",
        "MEDIAPROXY_ROUTES__PREFIXES": '["/media/", "/img/"]',
        "MEDIAPROXY_SERVER__TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
        "MEDIAPROXY_CORS__MAX_AGE": "60",
        "MEDIAPROXY_SERVER__PRESERVE_HOST": "false",
        "UNRELATED": "x",
    })
    assert config.backend.url == "http://127.0.0.1:9000"
    assert config.cache.memory.max_bytes == 64 * 1024 * 1024
    assert config.routes.prefixes == ("/media/", "/img/")
    assert config.server.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert config.cors.max_age == 60
    assert config.server.preserve_host is False


def test_environment_beats_file_and_file_beats_defaults(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[backend]\nurl = "http://10.1.1.1:8000"\nconnect_timeout = 2\n')
    config = load_config(path, environ={"MEDIAPROXY_BACKEND__URL": "http://127.0.0.1:1"})
    assert config.backend.url == "http://127.0.0.1:1"
    assert config.backend.connect_timeout == 2.0


@pytest.mark.parametrize("environ, key, fragment", [
    ({"MEDIAPROXY_BACKEND__URL": "ftp://x"}, "backend.url", '"ftp://x"'),
    ({"MEDIAPROXY_BACKEND__URL": "http://h/?q=1"}, "backend.url", "query"),
    ({"MEDIAPROXY_PROCESSING__DEFAULT_QUALITY": "101"}, "processing.default_quality", "101"),
    ({"MEDIAPROXY_PROCESSING__DEFAULT_QUALITY": "high"}, "processing.default_quality", '"high"'),
    ({"MEDIAPROXY_CACHE__MEMRY__MAX_BYTES": "1"}, "cache.memry", "unknown key"),
    ({"MEDIAPROXY_SERVER__TRUSTED_PROXIES": "10.0.0.0/33"}, "server.trusted_proxies",
     "10.0.0.0/33"),
    ({"MEDIAPROXY_ROUTES__PREFIXES": "media"}, "routes.prefixes", '"media"'),
    ({"MEDIAPROXY_SERVER__PRESERVE_HOST": "maybe"}, "server.preserve_host", '"maybe"'),
    ({"MEDIAPROXY_SERVER__LISTEN": "[]"}, "server.listen", "empty"),
    ({"MEDIAPROXY_CORS__RESOURCE_POLICY": "anyone"}, "cors.resource_policy", '"anyone"'),
])
def test_bad_values_name_the_variable_the_key_and_the_value(environ, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(environ=environ)
    [variable] = environ
    assert (info.value.key, info.value.where) == (key, variable)
    assert str(info.value).startswith(f"{variable}: {key}: ")
    assert fragment in str(info.value)


def test_bad_toml_file_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[backend\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})


def test_shipped_conf_file_documents_every_key_with_its_default():
    text = (ROOT / "conf" / "mediaproxy.toml").read_text()
    assert config_from_dict(tomllib.loads(text)) == Config()
    assert text == defaults_toml(), "run ./dev regen"


@settings(max_examples=60)
@given(configs)
def test_any_valid_config_round_trips_through_toml(config):
    assert config_from_dict(tomllib.loads(to_toml(config))) == config


@settings(max_examples=60)
@given(configs)
def test_any_valid_config_round_trips_through_dict(config):
    assert config_from_dict(config.to_dict()) == config


@given(st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=6))
def test_environment_parsing_only_raises_config_errors(environ):
    try:
        load_config(environ={f"MEDIAPROXY_{k}": v for k, v in environ.items()})
    except ConfigError:
        pass


def test_env_overrides_builds_a_tree():
    assert env_overrides({"MEDIAPROXY_A__B__C": "1", "MEDIAPROXY_A__D": "x",
                          "MEDIAPROXY_NOSECTION": "y"}) == {"a": {"b": {"c": "1"}, "d": "x"}}
