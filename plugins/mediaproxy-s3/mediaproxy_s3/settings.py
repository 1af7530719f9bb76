"""
The plugin's settings: an ``[s3]`` table, checked like the core's sections (same value kinds,
sizes such as ``"16MiB"``, errors naming ``s3.KEY``).

mediaproxy's own config file refuses sections it does not know, and the core has no place for
a plugin's settings yet, so they come from (later wins):

1. the ``[s3]`` table of the TOML file named by ``MEDIAPROXY_S3_CONFIG``;
2. one environment variable per key, ``MEDIAPROXY_S3_<KEY>`` (``MEDIAPROXY_S3_ENDPOINT``): one
   underscore after ``S3``, so the core's ``MEDIAPROXY_SECTION__KEY`` parser leaves them alone.

They are read once, when the proxy builds its cache layers; a SIGHUP does not read them again
(a changed store needs a restart, like ``cache.redis.url``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping

from attrs import frozen

from mediaproxy import ConfigError, build_settings, setting

ENV_PREFIX = "MEDIAPROXY_S3_"
FILE_VARIABLE = "MEDIAPROXY_S3_CONFIG"


def _positive(value) -> None:
    if value <= 0:
        raise ValueError(f"{value!r} is not above 0")


def _url(value: str) -> None:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")


def _prefix(value: str) -> None:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"{value!r} must be a relative key prefix such as 'mediaproxy/'")


@frozen
class S3Settings:
    endpoint: str = setting(
        "", "str", "The S3 endpoint, e.g. http://127.0.0.1:8333 or https://s3.eu-west-1."
        "amazonaws.com (requests use path-style URLs: ENDPOINT/BUCKET/KEY). Empty: the layer "
        "is off.", _url)
    bucket: str = setting("", "str", "The bucket (it must exist: the plugin never creates "
                          "one).")
    region: str = setting("us-east-1", "str", "The region the requests are signed for.")
    access_key: str = setting("", "str", "The access key ID; empty: AWS_ACCESS_KEY_ID.")
    secret_key: str = setting("", "str", "The secret access key; empty: "
                              "AWS_SECRET_ACCESS_KEY.", secret="value")
    prefix: str = setting("mediaproxy/", "str", "Every object's key starts with this (one "
                          "bucket can serve several deployments).", _prefix)
    ttl: float = setting(30 * 86400.0, "float", "Seconds a result is served from the store "
                         "after it was rendered: checked on every read against the object's "
                         "x-amz-meta-mp-expires; a bucket lifecycle rule on the prefix deletes "
                         "the objects themselves.", _positive)
    timeout: float = setting(2.0, "float", "Seconds one store operation (connect, request, "
                             "whole body) may take before it counts as failed and the next "
                             "layer answers.", _positive)
    connect_timeout: float = setting(1.0, "float", "Seconds to open a connection to the "
                                     "store.", _positive)
    max_item_bytes: int = setting(16 * 1024 * 1024, "int", "Larger results are not stored, "
                                  "and a larger object is not read.", _positive)
    max_connections: int = setting(16, "int", "Requests in flight to the store (and "
                                   "connections) at most; four times as many may wait for "
                                   "one, more are not tried.", _positive)
    failures_to_open: int = setting(3, "int", "Consecutive failed operations after which the "
                                    "store is skipped (every call fails at once) ...",
                                    _positive)
    retry_after: float = setting(5.0, "float", "... for about this many seconds (to the end "
                                 "of the clock's period, as the core's breakers); then one "
                                 "call probes the store, and a success lets every call "
                                 "through again.", _positive)
    sources: bool = setting(True, "bool", "Keep originals fetched from the backend in the "
                            "store too (the source cache; cache.source.file_ttl bounds their "
                            "age), so a node that never fetched a photo renders its other "
                            "sizes without asking the backend.")


def load_settings(environ: Mapping[str, str] | None = None) -> S3Settings:
    """The settings from ``environ`` (default: the process environment): the file named by
    ``MEDIAPROXY_S3_CONFIG``, then the ``MEDIAPROXY_S3_*`` variables."""
    environ = os.environ if environ is None else environ
    data: dict = {}
    path = environ.get(FILE_VARIABLE)
    if path:
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f).get("s3", {})
        except OSError as e:
            raise ConfigError(FILE_VARIABLE, f"cannot read {path!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(FILE_VARIABLE, f"{path!r} is not valid TOML: {e}") from None
        data.update(table)
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and name != FILE_VARIABLE:
            data[name[len(ENV_PREFIX):].lower()] = value
    return settings_from(data)


def settings_from(data: Mapping) -> S3Settings:
    """Checked settings from an ``[s3]`` table (a dict)."""
    return build_settings(S3Settings, data, "s3.")
