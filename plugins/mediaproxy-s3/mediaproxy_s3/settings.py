"""
The plugin's settings: the ``[s3]`` section of mediaproxy's own config file, declared through
the ``mediaproxy_settings`` hook and checked like the core's sections (same value kinds, sizes
such as ``"16MiB"``, errors naming the file and line or the variable and ``s3.KEY``). From the
environment: ``MEDIAPROXY_S3__KEY`` (``MEDIAPROXY_S3__ENDPOINT``), like any setting.

The proxy hands them to the plugin as ``runtime.config.plugin_settings("s3")``. The layer is
built once, when the proxy builds its cache layers; a SIGHUP reads the section again but a
changed store needs a restart (like ``cache.redis.url``).
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import frozen

from mediaproxy import build_settings, setting, show_value

#: The section's name: ``[s3]`` in the file, ``MEDIAPROXY_S3__KEY`` in the environment.
SECTION = "s3"


def _positive(value) -> None:
    if value <= 0:
        raise ValueError(f"{show_value(value)} is not above 0")


def _url(value: str) -> None:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"{show_value(value)} is not an http:// or https:// URL")


def _prefix(value: str) -> None:
    if value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"{show_value(value)} must be a relative key prefix such as "
                         "mediaproxy/")


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


def settings_from(data: Mapping) -> S3Settings:
    """Checked settings from an ``[s3]`` table (a dict)."""
    return build_settings(S3Settings, data, "s3.")
