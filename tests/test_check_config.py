"""``mediaproxy check-config`` prints the effective configuration without a single secret (the
schema marks them), and says when the file layer's own rules apply instead of applying them
silently."""

from __future__ import annotations

import os
import tomllib

import attrs
import pytest

from mediaproxy import cli
from mediaproxy.cache.files.layer import file_layer
from mediaproxy.config import Config, iter_settings, load_config, redact_url

SECRETS = {
    "signing-key-1": "sk1-0123456789abcdef0123456789abcdef",
    "signing-key-2": "sk2-fedcba9876543210fedcba9876543210",
    "admin-token": "tok-7f3a9c1e2b",
    "internal-secret": "int-5d8e2a7c4f",
    "redis-password": "rpw-9b1c3d5e7f",
    "shard-password": "spw-2a4c6e8f0b",
    "query-password": "qpw-1357924680",
}


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    # check-config reads MEDIAPROXY_* variables: none of the test process's may leak in
    for name in [n for n in os.environ if n.startswith("MEDIAPROXY_")]:
        monkeypatch.delenv(name)


def write_config(tmp_path, body: str):
    path = tmp_path / "mediaproxy.toml"
    path.write_text(body)
    return path


def check_config(path, capsys):
    code = cli.main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_no_secret_value_is_printed(tmp_path, capsys):
    s = SECRETS
    path = write_config(tmp_path, f"""
[signing]
keys = ["{s['signing-key-1']}", "{s['signing-key-2']}"]
[admin]
token = "{s['admin-token']}"
internal_secret = "{s['internal-secret']}"
[cache.redis]
url = "redis://default:{s['redis-password']}@10.0.0.5:6380/2"
shards = ["redis://:{s['shard-password']}@10.0.0.6:6379/0",
          "redis://10.0.0.7:6379/0?password={s['query-password']}&db=1"]
""")
    code, out, err = check_config(path, capsys)
    assert code == 0
    for name, value in SECRETS.items():
        assert value not in out and value not in err, name
    printed = tomllib.loads(out)                       # still valid TOML
    assert printed["signing"]["keys"] == ["<redacted>", "<redacted>"]   # how many: shown
    assert printed["admin"] == {"listen": "tcp:9109:interface=127.0.0.1",
                                "token": "<redacted>", "internal_secret": "<redacted>"}
    assert printed["cache"]["redis"]["url"] == "redis://default:<redacted>@10.0.0.5:6380/2"
    assert printed["cache"]["redis"]["shards"] == [
        "redis://:<redacted>@10.0.0.6:6379/0",
        "redis://10.0.0.7:6379/0?password=<redacted>&db=1"]
    # everything else is printed as it is
    assert printed["backend"]["url"] == "http://127.0.0.1:8000"
    assert printed["cache"]["redis"]["key_prefix"] == "mediaproxy:"


def test_unset_secrets_stay_visibly_unset(tmp_path, capsys):
    code, out, _ = check_config(write_config(tmp_path, ""), capsys)
    printed = tomllib.loads(out)
    assert (printed["admin"]["token"], printed["signing"]["keys"],
            printed["cache"]["redis"]["url"]) == ("", [], "")


def test_a_bad_secret_value_is_not_echoed_in_the_error(tmp_path, capsys):
    path = write_config(tmp_path, 'cache.redis.url = "http://:leaky-pw-42@h:1/0"\n'
                                  'signing.keys = ["short-key-43"]\n')
    code, out, err = check_config(path, capsys)
    assert code == 2 and out == ""
    assert "leaky-pw-42" not in err and "short-key-43" not in err
    assert err.startswith("configuration error: ")


#: Settings whose name sounds secret but that are not: each with why.
NOT_SECRET = {
    "cache.redis.key_prefix": "a namespace, not a credential",
    "ratelimit.max_keys": "a count of buckets",
}
SECRET_WORDS = ("password", "secret", "token", "key", "credential", "auth")


def test_every_setting_that_sounds_secret_is_marked_or_explained():
    # a guard for the next setting: the schema marks secrets, nothing guesses by name, but a
    # new "…_token" nobody marked fails here
    for key, field in iter_settings():
        if field.metadata["kind"] == "section":
            continue
        if any(word in key.rsplit(".", 1)[-1] for word in SECRET_WORDS):
            assert field.metadata.get("secret") or key in NOT_SECRET, key
    marked = sorted(key for key, f in iter_settings() if f.metadata.get("secret"))
    assert marked == ["admin.internal_secret", "admin.token", "cache.redis.shards",
                      "cache.redis.url", "signing.keys", "thumbor.security_key"]


@pytest.mark.parametrize("url, shown", [
    ("redis://:pw@h:6379/0", "redis://:<redacted>@h:6379/0"),
    ("rediss://user:pw@h/1?password=x&db=2", "rediss://user:<redacted>@h/1?password=<redacted>&db=2"),
    ("unix:///run/redis.sock?password=x", "unix:///run/redis.sock?password=<redacted>"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("redis://user@h", "redis://user@h"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


# -- the file layer's rules, said rather than silent -------------------------------------------

def notes_for(tmp_path, capsys, body):
    code, _, err = check_config(write_config(tmp_path, body), capsys)
    assert code == 0
    return [line for line in err.splitlines() if line.startswith("note: ")]


def test_no_note_without_a_file_layer(tmp_path, capsys):
    assert notes_for(tmp_path, capsys, "") == []


def test_the_per_entry_limit_is_said_when_the_file_layer_is_on(tmp_path, capsys):
    notes = notes_for(tmp_path, capsys, f'[cache.file]\ndir = "{tmp_path}"\nmax_bytes = 1000\n')
    assert notes == ["note: cache.file: entries larger than 25% of max_bytes (250 bytes) are "
                     "not stored in the file layer"]


def test_a_raised_max_age_is_said_and_matches_the_layer(tmp_path, capsys):
    body = (f'[cache]\nstale_if_error = 500\nstale_while_revalidate = 20\n'
            f'[cache.file]\ndir = "{tmp_path}"\nmax_bytes = 4000\nttl = 100\nmax_age = 50\n')
    notes = notes_for(tmp_path, capsys, body)
    assert notes[1] == ("note: cache.file.max_age (50 s) is shorter than ttl + the stale "
                        "grace (100 + 500 s): entries are kept 600 s, so a copy still "
                        "servable as stale is not deleted")
    config = load_config(write_config(tmp_path, body), environ={})
    layer = file_layer(config.cache.file, reactor=None, grace=500)
    assert (layer.max_age, layer.max_item_bytes) == (600, 1000)


def test_a_max_age_long_enough_gets_no_note(tmp_path, capsys):
    body = f'[cache.file]\ndir = "{tmp_path}"\nttl = 100\nmax_age = 86500\n'
    assert len(notes_for(tmp_path, capsys, body)) == 1


def test_the_redacted_copy_is_only_for_printing():
    from mediaproxy.config import redacted

    config = attrs.evolve(Config(), admin=attrs.evolve(Config().admin, token="t-123"))
    assert redacted(config).admin.token == "<redacted>" and config.admin.token == "t-123"
