"""
The configuration schema: one tree of frozen attrs classes.

Sources, weakest first: the defaults below, a TOML file (``--config FILE``), then environment
variables ``MEDIAPROXY_SECTION__KEY`` (``MEDIAPROXY_CACHE__MEMORY__MAX_BYTES=64MiB``). Every value
is validated when the config is built; a bad value raises :class:`ConfigError` naming where it
came from (``file:line`` or the variable), the dotted key and the value, so ``mediaproxy
check-config`` and ``twistd`` print one clear line. The plugins' own sections (``[s3]``) are
built by :func:`load_config` after the core's, from the classes they declare.

Every setting carries its help text in ``metadata``: ``conf/mediaproxy.toml`` and
``docs/configuration.md`` are checked against it by the tests, so the schema is the one place a
key is defined.

Why one module: it is read as one tree, in the order of the TOML file, each key's default, check
and help side by side; the loader, the environment mapping and the reference generator walk that
same tree. Cut in pieces, a key's default and its check would live in different files. What
knows no setting lives beside it in :mod:`mediaproxy.configload` (where values come from, the
messages, the environment's names, the plugins' sections) and :mod:`mediaproxy.tomlpos` (the
line of each key in a file). The
alert rules (``[[alerts.rules]]``, a list of tables) and their default set stay here for the same
reason: a rule is a setting, checked at load like any other, and rendered in the same reference.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

import attrs
from attrs import frozen

from .configload import (
    ENV_PREFIX, ConfigError, Origins, entry_point_plugins, env_name, env_tree, leaves,
    plugin_schemas, read_toml, show, suggest, toml_string, unknown_variables,
)

__all__ = ["ConfigError", "ENV_PREFIX", "Config", "PluginSections", "load_config", "setting",
           "section"]


# -- value kinds ------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2,
          "mb": 1000**2, "mib": 1024**2, "mi": 1024**2, "g": 1000**3, "gb": 1000**3,
          "gib": 1024**3, "gi": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be a boolean (true/false), got {show(value)}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, got {show(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match and match.group(2) and match.group(2).lower() in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
        try:
            return int(value.strip().replace("_", ""))
        except ValueError:
            pass
    raise ValueError(f"must be an integer, got {show(value)}")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {show(value)}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError(f"must be a number, got {show(value)}")


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"must be valid UTF-8, got {show(value)}") from None
        return value
    raise ValueError(f"must be a string, got {show(value)}")


def _to_strlist(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(_to_str(v) for v in value)
    raise ValueError(f"must be a list of strings, got {show(value)}")


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "bool": _to_bool, "int": _to_int, "float": _to_float, "str": _to_str,
    "strlist": _to_strlist,
}


def setting(default: Any, kind: str, help: str, check: Callable[[Any], None] | None = None,
            secret: str | None = None, item: type | None = None, key: str | None = None):
    """An attrs field for one setting: its default, value kind, help text and extra check.
    ``secret`` marks a value never to be printed (``mediaproxy check-config``, errors):
    ``"value"`` hides it whole, ``"url"`` hides the password of each URL in it.

    Kind ``"tables"`` is a TOML array of tables (``[[alerts.rules]]``): a tuple of ``item``
    instances, each a frozen class of settings built and checked like a section (its errors
    name ``alerts.rules[N].expr``). ``key`` is the name in TOML when it differs from the
    field's (``for``, a Python keyword)."""
    if isinstance(default, list):
        default = tuple(default)
    if secret not in (None, "value", "url"):
        raise ValueError(f"secret must be None, 'value' or 'url', not {secret!r}")
    if (kind == "tables") != (item is not None):
        raise ValueError("kind 'tables' and item go together")
    return attrs.field(default=default, metadata={"kind": kind, "help": help, "check": check,
                                                  "secret": secret, "item": item,
                                                  "key": key})


def _key(f: attrs.Attribute) -> str:
    """The setting's name in TOML and in the environment."""
    return f.metadata.get("key") or f.name


def section(cls: type, help: str):
    return attrs.field(factory=cls, metadata={"kind": "section", "cls": cls, "help": help})


# -- checks -----------------------------------------------------------------------------------

def _at_least(low: float) -> Callable[[Any], None]:
    def check(value):
        if value < low:
            raise ValueError(f"{show(value)} is below the minimum {low}")
    check.low, check.high = low, None  # type: ignore[attr-defined]  # read by tests/strategies.py
    return check


def _header_value(value: str) -> None:
    if any(not 0x20 <= ord(c) <= 0x7e for c in value):
        raise ValueError(f"{show(value)} is not printable ASCII")


def _between(low: float, high: float) -> Callable[[Any], None]:
    def check(value):
        if not low <= value <= high:
            raise ValueError(f"{show(value)} is outside {low}..{high}")
    check.low, check.high = low, high  # type: ignore[attr-defined]  # read by tests/strategies.py
    return check


def _prerender_list(value) -> None:
    if len(value) > 16:
        raise ValueError(f"{len(value)} queries; at most 16")
    for query in value:
        if query.startswith("?") or "/" in query or not query.strip():
            raise ValueError(f"{show(query)} is not a query string like w=300&fmt=webp")


def _one_of(*choices: str) -> Callable[[Any], None]:
    def check(value):
        if value not in choices:
            raise ValueError(f"{show(value)} is not one of {', '.join(choices)}")
    check.choices = choices  # type: ignore[attr-defined]  # read by tests/strategies.py
    return check


def _health_path(value: str) -> None:
    if not value.startswith("/") or any(c in value for c in "?# ") or len(value) < 2:
        raise ValueError(f"{show(value)} is not a path (/name, without query)")


def _health_prefix(value: str) -> None:
    if value:
        _health_path(value)
    if value.endswith("/"):
        raise ValueError(f"{show(value)}: a prefix is empty or a path without a trailing /")


def _health_probe(value: str) -> None:
    if value and (not value.startswith("/") or any(c in value for c in "# ")):
        raise ValueError(f"{show(value)} is not a backend path (/...)")


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _header_names(value: tuple[str, ...]) -> None:
    for name in value:
        if not _TOKEN.match(name):
            raise ValueError(f"{show(name)} is not an HTTP header name")


def _http_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{show(value)} is not an http(s) URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{show(value)} must not carry a query, fragment or credentials")
    try:
        parts.port  # noqa: B018 -- reading the property raises on a bad port
    except ValueError:
        raise ValueError(f"{show(value)} has a bad port") from None


def _cidrs(value: tuple[str, ...]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{show(item)} is not an IP address or CIDR network") from None


def _prefixes(value: tuple[str, ...]) -> None:
    for item in value:
        if not (item.startswith("/") and item.endswith("/")) or ".." in item:
            raise ValueError(f"{show(item)} must start and end with '/'")


def _status_or_zero(value: int) -> None:
    if value != 0 and not 200 <= value <= 599:
        raise ValueError(f"{show(value)} is neither 0 nor an HTTP status 200..599")


def _gap(value: float) -> None:
    if value != 0 and value < 1:
        raise ValueError(f"{show(value)} must be 0 or at least 1")


def _nonempty(value) -> None:
    if not value:
        raise ValueError("must not be empty")


def _endpoints(value: tuple[str, ...]) -> None:
    _nonempty(value)
    for item in value:
        if ":" not in item and not item.isdigit():
            raise ValueError(f"{show(item)} is not an endpoint string such as tcp:8080")


def _size_map(value: tuple[str, ...]) -> None:
    """``["gif=20MiB", "png=32MiB"]``: a byte limit per source format."""
    parse_size_map(value)


def parse_size_map(value: tuple[str, ...]) -> dict[str, int]:
    """``("gif=20MiB", ...)`` -> ``{"gif": 20971520, ...}``; ValueError naming the bad item."""
    out = {}
    for item in value:
        name, sep, size = item.partition("=")
        name = name.strip().lower()
        if not sep or name not in SOURCE_FORMATS:
            raise ValueError(f"{show(item)} is not FORMAT=SIZE with a format among "
                             f"{', '.join(SOURCE_FORMATS)}")
        try:
            out[name] = _to_int(size)
        except ValueError:
            raise ValueError(f"{show(item)} does not end in a size (such as 20MiB)") from None
        if out[name] < 1:
            raise ValueError(f"{show(item)} must allow at least one byte")
    return out


def _formats(value: tuple[str, ...]) -> None:
    for item in value:
        if item not in SOURCE_FORMATS:
            raise ValueError(f"{show(item)} is not one of {', '.join(SOURCE_FORMATS)}")


def _hosts(value: tuple[str, ...]) -> None:
    for item in value:
        bare = item[2:] if item.startswith("*.") else item
        if not bare or not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", bare):
            raise ValueError(f"{show(item)} is not a lower-case host name (or *.domain)")


def _signing_keys(value: tuple[str, ...]) -> None:
    for item in value:
        if len(item.encode("utf-8")) < 16:
            raise ValueError("a signing key must have at least 16 bytes (32 random bytes "
                             "recommended: `openssl rand -hex 32`)")


#: Source formats known to the magic-byte sniffer (:mod:`mediaproxy.http.fetch`).
SOURCE_FORMATS = ("jpeg", "png", "webp", "gif", "avif", "heif", "tiff", "bmp")


# -- the schema -------------------------------------------------------------------------------

def _to_workers(value: Any) -> int | str:
    """``server.workers``: "auto" or an integer (checked by :func:`_workers`)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _to_int(value)
    except ValueError:
        raise ValueError(f"{show(value)} is neither an integer nor \"auto\"") from None


def _workers(value: int | str) -> None:
    if not isinstance(value, str) and value < 1:   # a string is "auto" (the converter's)
        raise ValueError(f"{show(value)} is below the minimum 1 (\"auto\": one per CPU core)")


_CONVERT["workers"] = _to_workers


@frozen
class ServerConfig:
    listen: tuple[str, ...] = setting(
        ["tcp:8080"], "strlist",
        "Endpoints the proxy listens on (Twisted endpoint strings: tcp:8080, "
        "tcp:8080:interface=127.0.0.1, unix:/run/mediaproxy.sock, systemd:domain=INET:index=0). "
        "--listen on the command line replaces this list.", _endpoints)
    workers: int | str = setting(
        "auto", "workers", "Worker processes, each a whole proxy with its own reactor, thread "
        "pool and memory cache, sharing the tcp: listen endpoints (SO_REUSEPORT): an integer "
        "(1: one process) or auto, one per CPU core this process may run on. auto is one "
        "process, logged once with the reason, where several would not be safe or useful: "
        "one core, a listen endpoint that cannot be shared (unix:, systemd:, port 0), or a "
        "transform memory budget too small to split. The per-process budgets "
        "(cache.memory.max_bytes, cache.source.memory_bytes, limits.transform_memory, "
        "server.body_buffer_total, server.response_buffer_total, and processing.threads when "
        "automatic) are divided among the workers, never multiplied (docs/operations.md, "
        "Several workers).", _workers)
    trusted_proxies: tuple[str, ...] = setting(
        [], "strlist",
        "Peers (IPs or CIDR networks) whose X-Forwarded-For is believed and appended to. From any "
        "other peer X-Forwarded-For is replaced by the peer's address.", _cidrs)
    preserve_host: bool = setting(
        True, "bool", "Send the client's Host header to the backend (Django's ALLOWED_HOSTS "
        "sees the public name). false sends the backend's own host:port.")
    client_timeout: float = setting(
        60.0, "float", "Seconds a client connection may stay idle before it is closed.",
        _at_least(1))
    header_timeout: float = setting(
        10.0, "float", "Seconds from the first byte of a request to the end of its headers, "
        "however slowly the bytes trickle in (a total, not reset by each byte); then 408 and "
        "the connection is closed.", _at_least(0.01))
    body_timeout: float = setting(
        300.0, "float", "Seconds from the end of a request's headers to the last byte of its "
        "body, in total; then 408 (or the connection is closed when the response already "
        "started). Bodies up to server.body_buffer hold no backend slot meanwhile.",
        _at_least(0.01))
    write_timeout: float = setting(
        60.0, "float", "Seconds a response may wait on a full write buffer (the client reads "
        "nothing, or under about 64 KiB in that time) before the connection is aborted; also "
        "the longest a closing connection may take to drain.", _at_least(0.01))
    body_buffer: int = setting(
        1024 * 1024, "int", "Request body bytes read into memory before the request is "
        "processed: a body up to this size is received whole before a backend slot is taken, "
        "so a client that trickles it holds none. Larger (and chunked) bodies are streamed to "
        "the backend after this much, within server.body_timeout. 0: stream at once.",
        _at_least(0))
    body_buffer_total: int = setting(
        64 * 1024 * 1024, "int", "Request body bytes buffered by all requests of a process at "
        "once; beyond it reading further bodies pauses until some are sent (backpressure).",
        _at_least(64 * 1024))
    response_buffer: int = setting(
        256 * 1024, "int", "Pass-through response bytes held per connection for a client that "
        "reads slower than the backend sends, beyond the socket buffer: a response that fits "
        "frees its backend slot as soon as the backend is done. Only when it is full is the "
        "backend paused (while server.write_timeout runs).", _at_least(0))
    response_buffer_total: int = setting(
        64 * 1024 * 1024, "int", "Pass-through response bytes held for slow clients by all "
        "connections of a process at once; beyond it backends are paused as soon as their "
        "client is.", _at_least(0))
    max_client_connections: int = setting(
        1024, "int", "Concurrent connections per client address (behind server.trusted_proxies: "
        "requests in flight per X-Forwarded-For client); beyond it a request gets 429 "
        "too_many_connections and the connection is closed. 0: no cap.", _at_least(0))
    evict_stalled_after: float = setting(
        1.0, "float", "When every pass-through backend slot is taken, a download whose client "
        "has read nothing (its server.response_buffer full, the backend paused) for this many "
        "seconds is closed and its slot goes to the new request instead of a 503.",
        _at_least(0))
    server_header: str = setting(
        "mediaproxy", "str", "The Server header of the proxy's own responses (pass-through "
        "responses keep the backend's); empty: none. Carries no version by default.",
        _header_value)
    slot_wait: float = setting(
        5.0, "float", "Seconds a pass-through request waits for a backend slot when every one "
        "(backend.max_concurrent) is taken, looking every 0.1 s (a download ends, or one whose "
        "client reads nothing is evicted after server.evict_stalled_after), before it gets "
        "503 backend_busy; at most backend.max_concurrent requests wait. 0: refuse at once.",
        _at_least(0))
    drain_timeout: float = setting(
        25.0, "float", "Seconds a graceful stop (SIGTERM) waits for the requests in flight to "
        "finish once the ports are closed and /health/ready answers 503; requests still "
        "running then are cut. Keep it below the orchestrator's grace period (Kubernetes "
        "terminationGracePeriodSeconds, systemd TimeoutStopSec); with server.workers the "
        "supervisor gives its workers this plus 5 s before it kills them. A reload (SIGHUP) "
        "changes it.", _at_least(0))
    max_worker_requests: int = setting(
        0, "int", "Requests a worker serves before it is recycled: it stops accepting, "
        "finishes its requests (server.drain_timeout) and exits while the supervisor starts "
        "its replacement at once (the others keep serving). Checked every second, so a worker "
        "may serve a second's worth more. Worker 0, the supervisor, and a single process are "
        "never recycled (a warning is logged once). 0: never.", _at_least(0))
    max_worker_rss: int = setting(
        0, "int", "Resident memory in bytes (accepts 1GiB) above which a worker is recycled as "
        "with server.max_worker_requests, checked every second. 0: never, the default: the "
        "budgets bound a worker's memory by design, so this only guards against a leak; set "
        "it well above a worker's share of the budgets (the startup log names them) plus about "
        "200 MiB for the interpreter, or workers would be recycled in a loop.", _at_least(0))


@frozen
class BreakerConfig:
    enabled: bool = setting(True, "bool", "Use this circuit breaker.")
    failure_ratio: float = setting(
        0.5, "float", "Open when at least this share of the calls in the window failed.",
        _between(0.01, 1))
    min_calls: int = setting(
        10, "int", "Calls the window must hold before the ratio is judged (a few failures "
        "after a quiet spell do not open it).", _at_least(1))
    window: float = setting(
        5.0, "float", "Seconds of history the failure ratio is computed over (one-second "
        "slots). Short, so failures from before the backend recovered are soon forgotten.",
        _at_least(1))
    open_for: float = setting(
        1.0, "float", "About how long the breaker stays open (every call refused at once) "
        "before it lets probe calls through (half-open): until the end of the clock's first "
        "period of this length that ends at least half of it away (0.5 to 1.5 times it), so "
        "the breakers of every worker probe at the same moment. Service comes back at most "
        "1.5 times this long after the backend does.", _at_least(0.01))
    probes: int = setting(
        1, "int", "Probe calls let through at once while half-open; that many successes in a "
        "row close the breaker, one failure opens it again.", _at_least(1))
    consecutive_failures: int = setting(
        5, "int", "Failures in a row that open the breaker whatever the window holds, so a "
        "dead backend is known dead after a few calls even when traffic is light (0: only "
        "the ratio opens it).", _at_least(0))


@frozen
class BackendConfig:
    url: str = setting(
        "http://127.0.0.1:8000", "str",
        "The one backend (Django) every request goes to. Only this host is ever connected to "
        "for pass-through and sources.", _http_url)
    connect_timeout: float = setting(
        5.0, "float", "Seconds to establish a TCP connection to the backend (then 502).",
        _at_least(0.01))
    header_timeout: float = setting(
        30.0, "float", "Seconds from sending a request to receiving the response headers "
        "(then 504).", _at_least(0.01))
    idle_timeout: float = setting(
        60.0, "float", "Seconds a response body may stall between two chunks before the "
        "transfer is aborted. There is no total timeout: long downloads are fine.",
        _at_least(0.01))
    max_connections: int = setting(
        64, "int", "Persistent (keep-alive) connections kept open to the backend.",
        _at_least(1))
    pool_idle_timeout: float = setting(
        100.0, "float", "Seconds an unused keep-alive connection stays in the pool.",
        _at_least(1))
    max_concurrent: int = setting(
        512, "int", "Requests in flight to the backend at once, for pass-through and for "
        "source fetches each; beyond this a request is answered 503 at once instead of "
        "queueing without bound.", _at_least(1))
    source_timeout: float = setting(
        60.0, "float", "Seconds a whole source download may take, however steadily the bytes "
        "trickle in (a slow-loris origin), then 504.", _at_least(0.01))
    retries: int = setting(
        2, "int", "Extra attempts for a bodiless idempotent request (GET, HEAD, OPTIONS, and "
        "every source fetch) after a connection error or a 502/503/504, made only before any "
        "byte of the response went to the client (0: no retries).", _between(0, 10))
    retry_backoff: float = setting(
        0.1, "float", "Base of the exponential backoff between retries, in seconds: attempt n "
        "waits a random time up to retry_backoff x 2^n (full jitter).", _at_least(0))
    retry_backoff_max: float = setting(
        2.0, "float", "Longest wait between two retries, in seconds.", _at_least(0))
    image_breaker: BreakerConfig = section(
        BreakerConfig, "The circuit breaker of source fetches: connection errors, timeouts and "
        "5xx count as failures, 4xx never does. While open, image requests get the stale copy "
        "or the placeholder at once.")
    passthrough_breaker: BreakerConfig = section(
        BreakerConfig, "The circuit breaker of pass-through requests: only connection errors "
        "and timeouts count, never the backend's own error pages, so one broken view cannot "
        "take the shop down. While open, pass-through requests get a fast 503.")


@frozen
class RoutesConfig:
    prefixes: tuple[str, ...] = setting(
        ["/media/", "/static/"], "strlist",
        "Backend path prefixes whose images may be transformed with the query scheme "
        "(?w=&h=&fit=...). Other paths always pass through.", _prefixes)
    query_scheme: bool = setting(
        True, "bool", "Serve transforms from query parameters on the media prefixes.")
    compat: bool = setting(
        True, "bool", "Serve the grooveshop-media-stream routes under routes.compat_prefix "
        "(/media_stream-image/media/{tenant}/uploads/{path}/{w}/{h}/{fit}/{position}/"
        "{background}/{trim}/{quality}.{format}).")
    compat_prefix: str = setting(
        "/media_stream-image/", "str", "Path prefix of the compat routes.",
        lambda v: _prefixes((v,)))
    compat_placeholder_status: int = setting(
        200, "int", "Status of the placeholder a compat route serves for a missing or broken "
        "source (those frontends expect 200; set 0 for the honest 404/502/422).",
        _status_or_zero)
    image_extensions: tuple[str, ...] = setting(
        [".jpg", ".jpeg", ".png", ".webp", ".gif", ".avif", ".tif", ".tiff", ".bmp", ".svg"],
        "strlist", "File extensions (lower case) the query scheme treats as images. A media "
        "path with another extension, or without transform parameters, passes through.")
    presets_only: bool = setting(
        False, "bool", "Every transform on the query scheme must name a preset "
        "(?preset=NAME, a [presets.NAME] table): a request with transform parameters and no "
        "preset is refused (400 preset_required), so unsigned URLs can ask for a known set of "
        "variants only. The compat routes cannot name a preset: in this mode they are "
        "refused too (400 preset_required) unless signatures are required on them "
        "(signing.keys, compat not in signing.exempt_routes) or "
        "routes.compat_in_presets_only allows them. Unsafe thumbor URLs are refused too "
        "(400 preset_required); signed ones are served.")
    preset_overrides: str = setting(
        "auto", "str", "Whether a request naming a preset may also carry explicit transform "
        "parameters, which then win over the preset's values: allow, deny (400 "
        "preset_override) or auto (allow, except with routes.presets_only). A preset's own "
        "overrides key (allow or deny) decides for that preset.",
        _one_of("auto", "allow", "deny"))
    compat_in_presets_only: bool = setting(
        False, "bool", "With routes.presets_only, serve the unsigned grooveshop compat routes "
        "anyway (they name sizes, not presets, so any client can ask for any size there). "
        "Off: in presets-only mode a compat URL is refused (400 preset_required) unless "
        "signatures are required on the compat route.")


@frozen
class MemoryCacheConfig:
    enabled: bool = setting(True, "bool", "Keep transformed images in process memory.")
    max_bytes: int = setting(
        128 * 1024 * 1024, "int",
        "Upper bound of the memory layer in bytes of image data, per process (accepts 128MiB).",
        _at_least(0))
    max_item_bytes: int = setting(
        8 * 1024 * 1024, "int", "Larger results are not kept in memory.", _at_least(0))
    ttl: float = setting(
        86400.0, "float", "Seconds an entry stays in the memory layer.", _at_least(1))


def _redis_url(value: str) -> None:
    if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"{show(value)} is not a redis:// URL")


def _redis_urls(value: tuple[str, ...]) -> None:
    for item in value:
        _redis_url(item)


def _host_ports(value: tuple[str, ...]) -> None:
    for item in value:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{show(item)} is not host:port")


@frozen
class RedisCacheConfig:
    url: str = setting(
        "", "str", "Redis for the shared cache layer, locks and shared state, e.g. "
        "redis://127.0.0.1:6379/0. Empty: no Redis. A password in it is never printed.",
        _redis_url, secret="url")
    shards: tuple[str, ...] = setting(
        [], "strlist", "Scale-out: several Redis URLs; keys are spread over them "
        "(txredisapi sharded connections). Used instead of url when set.", _redis_urls,
        secret="url")
    sentinels: tuple[str, ...] = setting(
        [], "strlist", "High availability: Sentinel addresses (host:port). With "
        "sentinel_service set, the master is found through them.", _host_ports)
    sentinel_service: str = setting("", "str", "The Sentinel service (master) name.")
    key_prefix: str = setting("mediaproxy:", "str", "Prefix of every Redis key.")
    ttl: float = setting(
        7 * 86400.0, "float", "Seconds a result lives in Redis (every key has a TTL).",
        _at_least(1))
    max_item_bytes: int = setting(
        16 * 1024 * 1024, "int", "Larger results are not stored in Redis.", _at_least(0))
    pool_size: int = setting(8, "int", "Connections to each Redis.", _at_least(1))
    timeout: float = setting(
        2.0, "float", "Seconds a Redis command may take before the layer counts an error and "
        "the request goes on without it.", _at_least(0.01))


@frozen
class FileCacheConfig:
    dir: str = setting(
        "", "str", "Directory of the file layer (results and originals). Empty: no file "
        "layer.")
    max_bytes: int = setting(
        1024**3, "int", "Upper bound of the file layer in bytes (accepts 1GiB). An entry "
        "larger than a quarter of it is not stored in the file layer (one would flush most of "
        "it); check-config says so.", _at_least(0))
    ttl: float = setting(
        30 * 86400.0, "float", "Seconds a file entry is served as fresh.", _at_least(1))
    max_age: float = setting(
        90 * 86400.0, "float", "Retention: entries older than this are deleted by the "
        "cleanup, fresh or not. Raised to ttl + max(stale_while_revalidate, stale_if_error) "
        "when shorter, so a copy still servable as stale is kept; check-config says so.",
        _at_least(1))
    cleanup_interval: float = setting(
        300.0, "float", "Seconds between two cleanup passes (run in a thread).", _at_least(1))
    disk_warning_percent: float = setting(
        10.0, "float", "Free disk below this percentage: log a warning and shrink the cache.",
        _between(0, 100))
    disk_critical_percent: float = setting(
        5.0, "float", "Free disk below this percentage: stop writing and shrink hard.",
        _between(0, 100))


@frozen
class SourceCacheConfig:
    memory_bytes: int = setting(
        64 * 1024 * 1024, "int", "Originals kept in process memory after a fetch, in bytes, so "
        "the sizes of a srcset fetch their photo once (0: off). With the file layer on, "
        "originals are kept on disk too.", _at_least(0))
    ttl: float = setting(
        600.0, "float", "Seconds an original is reused from memory without asking the backend "
        "again.", _at_least(1))
    file_ttl: float = setting(
        86400.0, "float", "Seconds an original kept in the file layer (cache.file.dir) is "
        "reused, across restarts and by every process of the host.", _at_least(1))


def _cache_name(value: str) -> None:
    """Empty, or a Structured Field token (RFC 8941 3.3.4), as a Cache-Status member."""
    if value and not re.fullmatch(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*", value):
        raise ValueError(f"{show(value)} is not a Structured Field token (a letter, then letters, "
                         "digits or !#$%&'*+-.^_`|~:/)")


@frozen
class CacheConfig:
    cache_control: str = setting(
        "public, max-age=31536000, immutable", "str",
        "Cache-Control of successful image responses.")
    error_cache_control: str = setting(
        "no-store", "str", "Cache-Control of placeholder and error responses (a max-age is "
        "lowered to transient_max_age and immutable dropped).")
    x_cache_header: bool = setting(
        True, "bool", "Add X-Cache (HIT-MEMORY, MISS, ...) to image responses.")
    stale_while_revalidate: float = setting(
        0.0, "float", "Seconds past its TTL an entry may still be served while a fresh copy is "
        "made in the background (0: off).", _at_least(0))
    stale_if_error: float = setting(
        86400.0, "float", "Seconds past its TTL an entry is served (X-Cache: STALE) when the "
        "backend fails.", _at_least(0))
    negative_ttl: float = setting(
        60.0, "float", "Seconds a backend 404 (or other 4xx) for a source is remembered, so a "
        "missing image is not fetched on every hit (0: off). A 5xx is remembered for "
        "cache.negative_error_ttl instead.", _at_least(0))
    memory: MemoryCacheConfig = section(MemoryCacheConfig, "The in-process LRU layer.")
    source: SourceCacheConfig = section(SourceCacheConfig, "Originals fetched from the "
                                        "backend.")
    redis: RedisCacheConfig = section(RedisCacheConfig, "The shared Redis layer (off unless "
                                      "a URL is set).")
    file: FileCacheConfig = section(FileCacheConfig, "The file layer (off unless dir is set).")
    # headers
    transient_max_age: int = setting(
        10, "int", "Longest max-age, in seconds, of an answer that is not a fresh result: a "
        "stale copy (served past its TTL while it is refreshed, or because the backend failed) "
        "and a placeholder. Their Cache-Control is cache_control (stale) or "
        "error_cache_control (placeholder) with max-age and s-maxage lowered to this and "
        "immutable removed, so a CDN asks again soon instead of keeping them for a year "
        "(0: no-store).", _at_least(0))
    cache_status: str = setting(
        "mediaproxy", "str", "Name of this cache in the Cache-Status response header (RFC "
        "9211) of image responses, which says how each answer was made: hit with detail "
        "naming the layer, fwd=uri-miss/miss/stale for a request that went to the backend, "
        "stored, collapsed for one that waited for another request's transform, ttl (negative) "
        "for a stale copy. X-Cache is sent as well (x_cache_header). Empty: no Cache-Status.",
        _cache_name)

    # recovery
    negative_error_ttl: float = setting(
        1.0, "float", "Seconds a failed source fetch (the backend answered 5xx or could not be "
        "reached) is remembered, never longer than cache.stale_if_error: short, so images work "
        "again within about a second of the backend (0: off).", _at_least(0))


@frozen
class ProcessingConfig:
    threads: int = setting(
        0, "int", "Size of the thread pool that decodes, resizes and encodes images. 0 means "
        "one per CPU core in all: the cores divided among the server.workers processes, at "
        "least one each (with more, the workers' transform threads outnumber the cores and "
        "their event loops, which answer cached hits, wait behind them in an overload; see "
        "docs/performance.md, \"Overload\"). Pillow releases the GIL while it works, so "
        "threads use all cores. A number set is per worker.",
        _at_least(0))
    queue_limit: int = setting(
        256, "int", "Transforms waiting for a thread beyond this many are refused with 503.",
        _at_least(1))
    default_quality: int = setting(80, "int", "Quality when q= is absent (1-100).",
                                   _between(1, 100))
    jpeg_progressive: bool = setting(
        False, "bool", "Encode progressive JPEGs. Off by default: at thumbnail sizes libjpeg's "
        "progressive encoder costs 5-6x the baseline one (0.8 against 0.15 CPU ms for 300x169) "
        "for 1 % fewer bytes than an optimised baseline file (processing.jpeg_optimize; "
        "docs/performance.md, the cold path).")
    webp_method: int = setting(
        2, "int", "WebP encoder effort 0 (fast) to 6 (small). 2 by measurement: half the CPU "
        "of 4 (2.2 against 4.9 ms for 300x169) for about 5 % more bytes; 3 and 4 cost the "
        "same, 6 twice as much (docs/performance.md, the cold path).", _between(0, 6))
    avif_speed: int = setting(
        8, "int", "AVIF encoder speed 0 (slow, small) to 10 (fast). 8 keeps a 300 px AVIF "
        "near the cost of a WebP.", _between(0, 10))
    png_compress_level: int = setting(
        6, "int", "zlib level for PNG output (0-9).", _between(0, 9))
    reducing_gap: float = setting(
        2.0, "float", "Pillow reducing_gap: shrink by whole factors first when the source is "
        "at least this many times the target, then resample (0 disables; else at least 1).",
        _gap)
    draft_gap: float = setting(
        1.0, "float", "JPEG shrink-on-load: the decoder scales by 1/2, 1/4 or 1/8 while "
        "keeping at least draft_gap times the output size (1.0 is thumbor's choice; larger "
        "values decode more pixels for a little more sharpness).", _at_least(1))

    # admission
    queue_timeout: float = setting(
        1.0, "float", "Seconds a transform may wait for room in the transform memory budget "
        "(limits.transform_memory) before the client gets 503 overloaded with a Retry-After; "
        "at most queue_limit transforms wait, and a transform whose predicted wait (what waits "
        "before it, by the mean time a transform takes) is longer is refused at once. Short, "
        "so a burst leaves no backlog behind it: service is back within this after an "
        "overload.", _at_least(0.01))
    queue_target: float = setting(
        0.25, "float", "Seconds of predicted wait the door admits while the transform queue "
        "is standing: once every transform admitted for twice this long had waited more than "
        "this, the queue is not a burst draining but an overload, and a new request is "
        "admitted only if it would wait at most this long (else 503 with Retry-After at "
        "once), so the requests served during an overload wait this long, not the whole "
        "queue_timeout. It ends once the door has refused nothing for twice this long. 0: "
        "the door admits up "
        "to queue_timeout always.", _at_least(0.0))
    thread_niceness: int = setting(
        5, "int", "How much lower than the rest of the process the transform threads run "
        "(Linux nice, 0-19; 0: the same). The reactor thread answers cache hits, pass-through "
        "and health checks; with the transform threads a little nicer, the kernel runs it "
        "first when transforms fill every core, so an overload of cold transforms does not "
        "slow the hits down. 19 makes the hits during an overload faster still, for about a "
        "tenth more CPU per transform under a mixed load (the reactor then takes the core "
        "from a transform at each of its wake-ups; see docs/performance.md). Linux weighs "
        "niceness among the tasks of one scheduling group (a container's or a service's "
        "cgroup, else the login session).", _between(0, 19))
    jpeg_optimize: bool = setting(
        True, "bool", "Optimised Huffman tables for JPEG output: about 5 % fewer bytes for "
        "0.1 CPU ms more per 300x169 thumbnail (a second pass over the coefficients; the "
        "pixels are the same).")

    cheap_first_after: int = setting(
        4, "int", "Live transforms waiting from which the cheapest (by estimated size, which "
        "grows with the source's pixels) is admitted first instead of the first to arrive; a "
        "waiter's cost halves every quarter of queue_timeout it has waited, so an expensive "
        "one is not starved (see docs/performance.md, section The job queue).", _at_least(1))
    offer_nearest: bool = setting(
        True, "bool", "When a live transform is shed (queue full or queue_timeout passed), "
        "answer with the nearest variant of the same source already in the cache (same "
        "format preferred, then the nearest width; X-Cache: NEAREST, Content-Location naming "
        "it, a short Cache-Control) instead of 503; false: always 503.")
    decoded_cache_bytes: int = setting(
        0, "int", "Bytes of decoded source images kept for the next sizes of the same source "
        "(decode once, render many: a srcset's sizes decode a JPEG once or twice instead of "
        "once each; accepts 64MiB). They are taken out of the transform memory budget "
        "(limits.transform_memory), so transforms and this cache together stay within it. "
        "0: automatic, a quarter of the transform memory budget and at most 24 MiB; a "
        "larger value is lowered to half of it; negative: off. A configured size is the host's: "
        "with several workers (server.workers) each keeps an equal share of it; the automatic "
        "one is a quarter of each worker's share of the transform budget, at most 24 MiB a "
        "worker (see docs/performance.md, \"Decode once, render many\" and \"Every core\").")
    parallel_resize: bool = setting(
        True, "bool", "Cut a large downscale (an output of 250,000 pixels or more) in two "
        "horizontal strips and resize the second on a helper thread when it is free (one per "
        "process; busy: this thread resizes both). The same CPU, about half the wait for the "
        "resize when a core is idle (a srcset's larger sizes); the output is a LANCZOS resize "
        "of the same size, within 2 levels of a one-piece resize on photographs (see "
        "docs/performance.md, \"Decode once, render many\").")
    large_resample: str = setting(
        "bicubic", "str", "The resize filter of outputs of 250,000 pixels or more (smaller ones "
        "always take LANCZOS, thumbor's filter): bicubic or lanczos. Bicubic by measurement: "
        "after a q80 JPEG encode the outputs of a srcset are within 0.02 dB PSNR of LANCZOS's "
        "against a full-size reference (the encoder's loss is 15-20 dB larger than the "
        "filters' difference) and 2 % smaller, for a fifth less resize CPU (see "
        "docs/performance.md, \"Decode once, render many\").", _one_of("bicubic", "lanczos"))


@frozen
class LimitsConfig:
    max_width: int = setting(8192, "int", "Largest output width (w=).", _at_least(1))
    max_height: int = setting(8192, "int", "Largest output height (h=).", _at_least(1))
    max_output_pixels: int = setting(
        7680 * 4320, "int", "Largest output area, width x height.", _at_least(1))
    max_source_pixels: int = setting(
        50_000_000, "int", "Largest source area x frames that will be decoded.", _at_least(1))
    max_source_bytes: int = setting(
        50 * 1024 * 1024, "int", "Largest source download, enforced while streaming.",
        _at_least(1))
    max_frames: int = setting(
        200, "int", "Most frames an animated source may have (more gives 422).", _at_least(1))
    transform_timeout: float = setting(
        30.0, "float", "Seconds a transform may take before the client gets 503 "
        "(transform_timeout, with Retry-After). The thread stops too: the transform checks its "
        "deadline between phases, frames and decode chunks, so it is free again within one "
        "uninterruptible step (see docs/imaging.md).", _at_least(0.1))
    max_source_bytes_by_format: tuple[str, ...] = setting(
        ["jpeg=32MiB", "png=32MiB", "webp=16MiB", "gif=16MiB", "avif=16MiB", "heif=16MiB"],
        "strlist", "Per-format source byte limits (FORMAT=SIZE), enforced while streaming as "
        "soon as the magic bytes name the format; formats not listed have max_source_bytes.",
        _size_map)
    source_formats: tuple[str, ...] = setting(
        list(SOURCE_FORMATS), "strlist", "Source formats accepted, recognised by their magic "
        "bytes (never by extension or Content-Type). Anything else (HTML, SVG, text) is "
        "refused with 422 after its first bytes.", _formats)
    max_jpeg_scans: int = setting(
        100, "int", "Most scans a JPEG source may have; more is refused (422 too_many_scans, "
        "JSON) before decoding. Every progressive scan walks every block of the image, so a "
        "small file repeating a scan thousands of times costs minutes of CPU. Encoders write "
        "1 (baseline) to about 10 (libjpeg, mozjpeg progressive) scans; 100 leaves room for "
        "any real file (like libjpeg-turbo's djpeg -maxscans).", _at_least(1))
    max_transform_bytes: int = setting(
        1024 * 1024 * 1024, "int", "Most memory one transform may take, estimated before "
        "decoding from the file's structure (decoded frames, working copies, every output "
        "frame held until the encode, the format's conversions and encoder buffers; see "
        "docs/imaging.md); more is refused (422 over_memory_budget, JSON). 1 GiB lets a 50 MP "
        "photo be resized to any size as JPEG or PNG (and to a few thousand pixels wide as WebP "
        "or AVIF) and usual animations through; an animated GIF enlarged to thousands of pixels "
        "per frame is refused.", _at_least(16 * 1024 * 1024))

    # admission
    transform_memory: int = setting(
        0, "int", "Bytes all transforms of the process may hold at once, by their estimates "
        "(accepts 640MiB); beyond it transforms wait (processing.queue_timeout). It is also the "
        "most one transform may take (limits.max_transform_bytes is lowered to it). 0: "
        "automatic, an eighth of the machine's memory and at most 640 MiB (see "
        "docs/performance.md).", _at_least(0))


@frozen
class ValidationConfig:
    unknown_params: str = setting(
        "ignore", "str", "Query parameters no plugin registered on an image request: ignore "
        "(left out of the cache key) or reject (400 naming the parameter).",
        _one_of("ignore", "reject"))
    max_path_length: int = setting(
        1024, "int", "Longest source path in bytes (UTF-8, after percent-decoding).",
        _between(16, 65536))
    source_prefixes: tuple[str, ...] = setting(
        [], "strlist", "Backend path prefixes sources may be read from. Empty: those of "
        "routes.prefixes. Other paths are 404.", _prefixes)


def _route_names(value: tuple[str, ...]) -> None:
    for item in value:
        if not re.fullmatch(r"[a-z0-9_.-]{1,64}", item):
            raise ValueError(f"{show(item)} is not a route name (query, compat, ...)")


@frozen
class SigningConfig:
    keys: tuple[str, ...] = setting(
        [], "strlist", "HMAC-SHA256 keys for signed URLs (at least 16 bytes each; "
        "`openssl rand -hex 32`). The first signs (mediaproxy sign URL), every one verifies, "
        "so a key is rotated by putting the new one first and dropping the old one later. "
        "With a key set, transform requests without a valid `sig` are refused (403). Empty: "
        "signatures off. Never printed.", _signing_keys, secret="value")
    exempt_routes: tuple[str, ...] = setting(
        [], "strlist", "Routes served without a signature even when keys are set, for "
        "frontends that cannot sign (for example compat).", _route_names)


@frozen
class RateLimitConfig:
    enabled: bool = setting(True, "bool", "Limit image requests per client and tenant.")
    ip_rate: float = setting(
        500.0, "float", "Image requests per second per client IP (a cheap token, taken before "
        "the cache lookup; 0: unlimited). The client IP comes from X-Forwarded-For only when "
        "the peer is in server.trusted_proxies.", _at_least(0))
    ip_burst: int = setting(
        1000, "int", "Image requests a client may make at once (bucket size): a page with a "
        "few hundred thumbnails must load at once.", _at_least(1))
    ip_transform_rate: float = setting(
        20.0, "float", "Transforms (cache misses) per second per client IP (an expensive "
        "token, taken before a transform; 0: unlimited).", _at_least(0))
    ip_transform_burst: int = setting(
        100, "int", "Transforms a client may start at once.", _at_least(1))
    tenant_rate: float = setting(
        0.0, "float", "Image requests per second per tenant (0: unlimited).", _at_least(0))
    tenant_burst: int = setting(2000, "int", "Bucket size of tenant_rate.", _at_least(1))
    tenant_transform_rate: float = setting(
        0.0, "float", "Transforms per second per tenant (0: unlimited).", _at_least(0))
    tenant_transform_burst: int = setting(
        500, "int", "Bucket size of tenant_transform_rate.", _at_least(1))
    passthrough_rate: float = setting(
        0.0, "float", "Pass-through requests per second per client IP (0: unlimited, the "
        "default: the backend is the shop and limits itself).", _at_least(0))
    passthrough_burst: int = setting(
        200, "int", "Bucket size of passthrough_rate.", _at_least(1))
    exempt: tuple[str, ...] = setting(
        ["127.0.0.0/8", "::1"], "strlist", "Client addresses or networks never limited "
        "(internal monitoring, warm-up jobs). Loopback by default: behind a reverse proxy on "
        "the same host that is not in server.trusted_proxies every visitor would share one "
        "bucket; list that proxy in server.trusted_proxies so its visitors are limited one by "
        "one. Health, metrics and admin listeners are never limited.", _cidrs)
    max_keys: int = setting(
        100_000, "int", "Most buckets kept in memory per process; full (idle) buckets are "
        "dropped first.", _at_least(100))
    adaptive: bool = setting(
        True, "bool", "Shrink every budget while the host is under pressure (CPU, memory or "
        "the transform queue above their thresholds), sampled in the background.")
    cpu_percent: float = setting(
        85.0, "float", "CPU use (whole host, percent) above which budgets shrink.",
        _between(1, 100))
    memory_percent: float = setting(
        90.0, "float", "Memory use (whole host, percent) above which budgets shrink.",
        _between(1, 100))
    queue_percent: float = setting(
        75.0, "float", "Transform queue fill (percent of processing.queue_limit) above which "
        "budgets shrink.", _between(1, 100))
    pressure_factor: float = setting(
        0.5, "float", "Budgets are multiplied by this for each threshold crossed.",
        _between(0.01, 1))
    sample_interval: float = setting(
        1.0, "float", "Seconds between two samples of CPU, memory and queue.", _at_least(0.05))
    sync_interval: float = setting(
        5.0, "float", "Seconds between two exchanges of bucket usage with the other nodes "
        "through Redis (cache.redis; 0 or no Redis: each node limits alone). Nothing is "
        "looked up in Redis per request.", _at_least(0))


@frozen
class SsrfConfig:
    allow_networks: tuple[str, ...] = setting(
        [], "strlist", "Addresses or networks a plugin's fetch (watermarks, remote sources) "
        "may connect to although the address filter refuses them (loopback, private, "
        "link-local, CGNAT, IPv4-embedding IPv6 ...). The backend is never filtered.",
        _cidrs)
    allowed_hosts: tuple[str, ...] = setting(
        [], "strlist", "Host names plugins may fetch from (exact, or *.example.com for the "
        "subdomains). Empty: any host, the address filter still applies.", _hosts)
    max_redirects: int = setting(
        0, "int", "Redirects a plugin's fetch follows, each hop checked again (0: none).",
        _between(0, 10))
    connect_timeout: float = setting(
        5.0, "float", "Seconds to connect for a plugin's fetch.", _at_least(0.01))


@frozen
class CorsConfig:
    allow_origins: tuple[str, ...] = setting(
        ["*"], "strlist", "Origins allowed to read images (Access-Control-Allow-Origin). "
        "Empty sends no CORS headers.")
    allow_methods: tuple[str, ...] = setting(
        ["GET", "HEAD", "OPTIONS"], "strlist", "Access-Control-Allow-Methods.")
    max_age: int = setting(86400, "int", "Access-Control-Max-Age of preflight answers.",
                           _at_least(0))
    resource_policy: str = setting(
        "cross-origin", "str", "Cross-Origin-Resource-Policy of image responses "
        "(same-origin, same-site, cross-origin; empty to omit).",
        _one_of("", "same-origin", "same-site", "cross-origin"))


@frozen
class AdminConfig:
    listen: str = setting(
        "tcp:9109:interface=127.0.0.1", "str", "Endpoint of the admin listener (cache purge, "
        "stats). It is started only when admin.token is set: without a token nothing listens.")
    token: str = setting(
        "", "str", "Bearer token the admin listener requires (Authorization: Bearer TOKEN), "
        "compared in constant time. Empty: no admin listener. Never printed.",
        secret="value")
    internal_secret: str = setting(
        "", "str", "Value of the x-internal-secret header accepted by the grooveshop call "
        "POST /admin/cache/flush-tenant (empty: only the token is accepted). Never printed.",
        secret="value")


@frozen
class WarmupConfig:
    interval: float = setting(
        0.0, "float", "Seconds between two background warm-ups that re-render the most "
        "requested variants, one at a time (0: off).", _at_least(0))
    top: int = setting(100, "int", "How many of the most requested variants a warm-up renders.",
                       _at_least(1))
    urls: tuple[str, ...] = setting(
        [], "strlist", "Image URLs (path and query, as a client asks: /media/a.jpg?w=300) "
        "rendered as background jobs at start and, with interval > 0, at every warm-up when "
        "missing or stale. Each goes through the checks of a request (routes, validation, "
        "signatures); one refused is logged and skipped.")
    prerender: tuple[str, ...] = setting(
        [], "strlist", "Query strings (w=300&h=300&fit=cover&fmt=webp) rendered as background "
        "jobs for every source this process fetches for the first time, so the sizes a page "
        "will ask for next are ready. At most 16.", _prerender_list)


@frozen
class JobsConfig:
    queue_limit: int = setting(
        1000, "int", "Background jobs (warm-up, pre-render, stale-while-revalidate refreshes) "
        "queued at most; more are dropped (counted as dropped).", _at_least(1))
    concurrency: int = setting(
        1, "int", "Background jobs running at once. Each also waits for room in the "
        "transform memory budget behind every live request, and never takes the last thread.",
        _at_least(1))
    timeout: float = setting(
        60.0, "float", "Seconds a background job may take, waits included; then it is "
        "stopped (outcome timeout, not retried).", _at_least(0.1))
    retries: int = setting(
        3, "int", "Times a failed background job (the queue was busy, the backend failed) is "
        "tried again.", _at_least(0))
    retry_backoff: float = setting(
        1.0, "float", "Seconds before the first retry; each next one waits twice as long.",
        _at_least(0))
    retry_backoff_max: float = setting(
        60.0, "float", "Longest wait before a retry.", _at_least(0))


@frozen
class MonitoringConfig:
    log_level: str = setting("info", "str", "debug, info, warn, error.",
                             _one_of("debug", "info", "warn", "error", "critical"))
    log_format: str = setting("text", "str", "text (one line per event) or json "
                              "(one JSON object per line).", _one_of("text", "json"))
    access_log: bool = setting(
        False, "bool", "Log one line per main-port request (logger mediaproxy.access): "
        "correlation ID, client, method, path, status, body bytes, duration, cache outcome "
        "and route kind, as text or JSON keys (log_format), whatever log_level says. Off by "
        "default: the web server or CDN in front usually keeps the access log.")
    listen: str = setting(
        "", "str", "Endpoint of the monitoring listener serving /metrics (Prometheus) and "
        "/health, e.g. tcp:9108:interface=127.0.0.1. Empty: no listener. Kept off the main "
        "port, whose every path belongs to the backend.")
    trace_hooks: bool = setting(
        False, "bool", "Log every hook call with its arguments and result "
        "(MEDIAPROXY_MONITORING__TRACE_HOOKS=1).")
    health_path: str = setting(
        "/health", "str", "Path of the detailed health report (JSON: every indicator, overall "
        "healthy, degraded (200) or unhealthy (503), uptime, version), answered from a "
        "snapshot refreshed in the background. On the monitoring listener, and under "
        "health_prefix on the main port.", _health_path)
    live_path: str = setting(
        "/health/live", "str", "Path of the liveness probe: 200 whenever the process answers "
        "at all; it never depends on a dependency (a Kubernetes livenessProbe).", _health_path)
    ready_path: str = setting(
        "/health/ready", "str", "Path of the readiness probe: 200 when the process can serve "
        "(started, transform pool running, no backend circuit breaker open, not draining), "
        "else 503 naming the reasons (a load balancer's health check, a Kubernetes "
        "readinessProbe). Redis down or a busy transform queue never make it 503.",
        _health_path)
    health_prefix: str = setting(
        "", "str", "Also answer the three health paths on the main port under this prefix "
        "(e.g. /_mediaproxy serves /_mediaproxy/health/ready), before routing, rate limits "
        "and the backend. Empty: health only on the monitoring listener.", _health_prefix)
    health_interval: float = setting(
        5.0, "float", "Seconds between two refreshes of the health snapshot that /health "
        "answers from (the first is taken at start).", _at_least(0.05))
    health_timeout: float = setting(
        2.0, "float", "Seconds each health indicator has to answer in a refresh; one that "
        "does not is reported not ok, 'timed out', and never delays /health.",
        _at_least(0.01))
    health_backend_probe: str = setting(
        "/", "str", "Backend path the health snapshot asks with HEAD to report the backend's "
        "reachability and latency (critical: an answer of 500 or more, or none, makes the "
        "proxy unhealthy). Empty: no probe.", _health_probe)
    request_id_headers: tuple[str, ...] = setting(
        ["X-Correlation-ID", "X-Request-ID"], "strlist",
        "Incoming headers whose value becomes the request's correlation ID, in order: the "
        "first present and well-formed (1 to 128 of A-Z a-z 0-9 . _ : -) wins; with none, the "
        "proxy makes one. Every log line of the request carries it; the response and the "
        "backend request carry it as X-Correlation-ID (and in each of these headers the "
        "client sent).", _header_names)


@frozen
class PluginsConfig:
    disabled: tuple[str, ...] = setting(
        [], "strlist", "Plugins to leave out, by name: built-ins (for example "
        "mediaproxy.builtin.cors) or entry-point names of installed plugins.")
    load_entrypoints: bool = setting(
        True, "bool", "Load third-party plugins from the 'mediaproxy' entry-point group.")


# -- alert rules ([[alerts.rules]]) -----------------------------------------------------------

#: The figures an alert rule may compare (mediaproxy.monitoring computes each). Per route kind
#: over the rolling window (``alerts.window``): latency percentiles in seconds, requests per
#: second, the share of 5xx (``error_rate``) and of 4xx (``client_error_rate``) answers; the
#: rest read at each evaluation. A figure that cannot be known (no requests in the window, no
#: file cache for ``disk.free_ratio``) leaves its rules inactive.
ALERT_FIGURES = frozenset(
    [f"{kind}.{figure}" for kind in ("image", "passthrough")
     for figure in ("p50", "p95", "p99", "rate", "error_rate", "client_error_rate")]
    + ["cache.hit_ratio", "reactor.lag", "breaker.images.open", "breaker.passthrough.open",
       "disk.free_ratio", "shed.rate", "transform.queue", "inflight.total"])

_CONDITION = re.compile(r"^\s*([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+)\s*(>=|<=|==|!=|>|<)\s*"
                        r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
#: The comparison operators of a rule's ``expr``.
OPERATORS = (">=", "<=", "==", "!=", ">", "<")


def parse_condition(text: str) -> tuple[str, str, float]:
    """``"image.p99 > 2.5"`` -> ``("image.p99", ">", 2.5)``: one figure of
    :data:`ALERT_FIGURES`, one operator of :data:`OPERATORS`, one number. Parsed, never
    evaluated as code; ValueError saying what is wrong."""
    match = _CONDITION.match(text)
    if not match:
        raise ValueError(f"{show(text)} is not FIGURE OP NUMBER (such as image.p99 > 2.5; "
                         f"OP one of {' '.join(OPERATORS)})")
    figure, op, number = match.groups()
    if figure not in ALERT_FIGURES:
        raise ValueError(f"{show(text)} names the unknown figure {show(figure)} (known: "
                         f"{', '.join(sorted(ALERT_FIGURES))})")
    return figure, op, float(number)


def _condition(value: str) -> None:
    parse_condition(value)


def _rule_name(value: str) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", value):
        raise ValueError(f"{show(value)} is not a rule name (lower-case letters, digits and _, "
                         f"starting with a letter, at most 63)")


def _one_line(value: str) -> None:
    if "\n" in value or "\r" in value or len(value) > 300:
        raise ValueError("must be one line of at most 300 characters")


def _unique_names(value: tuple) -> None:
    names = [rule.name for rule in value]
    doubles = sorted({n for n in names if names.count(n) > 1})
    if doubles:
        raise ValueError(f"rule names must be unique: {', '.join(doubles)} repeated")
    if len(value) > 100:
        raise ValueError("at most 100 rules")


@frozen
class AlertRule:
    """One ``[[alerts.rules]]`` table."""

    name: str = setting("", "str", "The rule's name: the alert label of "
                        "mediaproxy_alert_firing, and the name in logs and /admin/alerts.",
                        _rule_name)
    expr: str = setting("", "str", "The condition: FIGURE OP NUMBER, e.g. image.p99 > 2.5 "
                        "(figures and their meaning: docs/operations.md, Performance figures "
                        "and alerts).", _condition)
    for_: float = setting(0.0, "float", "Seconds the condition must hold before the alert "
                          "fires (pending until then).", _at_least(0), key="for")
    severity: str = setting("warning", "str", "warning or critical (a critical alert firing "
                            "makes /health degraded).", _one_of("warning", "critical"))
    remedy: str = setting("", "str", "One line saying what to change when it fires "
                          "(logged with the alert).", _one_line)


DEFAULT_ALERT_RULES = (
    AlertRule("image_latency_high", "image.p99 > 2.5", 120.0, "warning",
              "transforms are slow or queued: raise processing.threads or "
              "limits.transform_memory, add workers, or put cache.file.dir on a faster disk"),
    AlertRule("image_errors_high", "image.error_rate > 0.05", 120.0, "critical",
              "image requests fail with 5xx: look at the source_errors and transform_errors "
              "series and the backend's health"),
    AlertRule("passthrough_errors_high", "passthrough.error_rate > 0.05", 120.0, "warning",
              "the backend answers 5xx or cannot be reached (502/504): check the backend and "
              "backend.url"),
    AlertRule("cache_hit_ratio_low", "cache.hit_ratio < 0.5", 600.0, "warning",
              "most images are rendered again: raise cache.memory.max_bytes, set "
              "cache.file.dir or Redis, or look for cache-busting query strings"),
    AlertRule("reactor_lag_high", "reactor.lag > 0.5", 30.0, "critical",
              "the event loop is blocked or the CPU saturated: lower processing.threads "
              "or raise processing.thread_niceness, add workers or CPUs"),
    AlertRule("images_breaker_open", "breaker.images.open == 1", 30.0, "critical",
              "the backend fails most source fetches: check it; POST /admin/breakers/reset "
              "once it is back"),
    AlertRule("passthrough_breaker_open", "breaker.passthrough.open == 1", 30.0, "critical",
              "the backend cannot be reached: check it and backend.url"),
    AlertRule("cache_disk_low", "disk.free_ratio < 0.1", 60.0, "warning",
              "the cache disk is nearly full: free space, or lower cache.file.max_bytes"),
    AlertRule("transforms_shed", "shed.rate > 1", 60.0, "warning",
              "transforms are refused (503 overloaded): raise limits.transform_memory, "
              "processing.threads or processing.queue_limit, or add workers"),
)


@frozen
class AlertsConfig:
    enabled: bool = setting(
        True, "bool", "Compute the rolling performance figures and evaluate the alert rules "
        "in process (GET /admin/performance, /admin/alerts, mediaproxy_alert_firing, the "
        "alerts health indicator).")
    interval: float = setting(
        5.0, "float", "Seconds between two evaluations of the alert rules.", _between(0.1, 3600))
    window: float = setting(
        60.0, "float", "Seconds of requests the rolling figures cover (latency percentiles, "
        "rates, error and hit ratios): one-second slots, so memory does not grow with "
        "traffic.", _between(1, 3600))
    min_requests: int = setting(
        20, "int", "Requests a route kind needs in the window before its percentiles and "
        "ratios are judged: with fewer they are unknown and their rules stay inactive (three "
        "slow requests at night are no alert).", _at_least(1))
    rules: tuple[AlertRule, ...] = setting(
        DEFAULT_ALERT_RULES, "tables", "The alert rules, each a [[alerts.rules]] table with "
        "name, expr, for, severity and remedy. Setting the list replaces the defaults "
        "(copy the ones to keep from conf/mediaproxy.toml); an empty list: no rules.",
        _unique_names, item=AlertRule)


# -- presets ([presets.NAME]) --------------------------------------------------------------

#: A preset's name: lower case, so the environment can name it
#: (``MEDIAPROXY_PRESETS__THUMB__W``); ``-`` is allowed but only settable from the file.
PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PRESET_KEY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: Bounds on what the presets may hold (the table stays small enough to print and to check).
MAX_PRESETS = 256
MAX_PRESET_VALUES = 32
_MAX_PRESET_TEXT = 256
#: The key of a preset table that is no transform parameter.
PRESET_OVERRIDES_KEY = "overrides"


@frozen
class Preset:
    """One ``[presets.NAME]`` table: a named transform. ``values`` are the (parameter
    spelling, value) pairs as written, in file order; they are checked against the parameter
    registry (the same parsers as the query) when the proxy builds it, see
    :mod:`mediaproxy.presets`. ``overrides``: ``inherit`` (routes.preset_overrides decides),
    ``allow`` or ``deny``."""

    name: str
    values: tuple[tuple[str, str | int | bool], ...] = ()
    overrides: str = "inherit"


def preset_key(name: str, spelling: str) -> str:
    """The dotted key of one value of a preset (``presets.thumb.w``)."""
    return f"presets.{name}.{spelling}"


def preset_where(name: str, spelling: str) -> str:
    """Where such a value is set: ``[presets.thumb] w in the file, or
    MEDIAPROXY_PRESETS__THUMB__W``, for error messages."""
    return (f"[presets.{name}] {spelling} in the file, or "
            f"{env_name(preset_key(name, spelling))}")


def _preset_value(value: Any) -> str | int | bool:
    if isinstance(value, bool) or isinstance(value, int):
        return value
    if isinstance(value, str):
        _to_str(value)
        if len(value) > _MAX_PRESET_TEXT:
            raise ValueError(f"longer than {_MAX_PRESET_TEXT} characters")
        return value
    raise ValueError(f"{show(value)} is not a string, a whole number or a boolean")


def _presets(value: Any, key: str) -> tuple[Preset, ...]:
    """``{name: {spelling: value, ...}, ...}`` -> Presets sorted by name; the shape checked
    here, each value against its parameter when the registry is known."""
    if not isinstance(value, Mapping):
        raise ConfigError(key, "must be a table of tables ([presets.NAME] in the file, or "
                               "MEDIAPROXY_PRESETS__NAME__PARAM in the environment)")
    if len(value) > MAX_PRESETS:
        raise ConfigError(key, f"{len(value)} presets; at most {MAX_PRESETS}")
    out = []
    for name, table in value.items():
        if not isinstance(name, str) or not PRESET_NAME.match(name):
            raise ConfigError(f"{key}.{name}", "is not a preset name (lower-case letters, "
                                               "digits, _ and -, at most 64, starting with a "
                                               "letter or digit)")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{key}.{name}", f"must be a table ([presets.{name}] in the file, "
                                               f"or {env_name(key + '.' + name)}__PARAM)")
        values, overrides = [], "inherit"
        for spelling, raw in table.items():
            where = preset_where(name, spelling)
            if not isinstance(spelling, str) or not _PRESET_KEY.match(spelling):
                raise ConfigError(preset_key(name, str(spelling)),
                                  f"is not a parameter name ({where})")
            if spelling == PRESET_OVERRIDES_KEY:
                if raw not in ("inherit", "allow", "deny"):
                    raise ConfigError(preset_key(name, spelling),
                                      f"{show(raw)} is not one of inherit, allow, deny ({where})")
                overrides = raw
                continue
            try:
                values.append((spelling, _preset_value(raw)))
            except ValueError as e:
                raise ConfigError(preset_key(name, spelling), f"{e} ({where})") from None
        if len(values) > MAX_PRESET_VALUES:
            raise ConfigError(f"{key}.{name}", f"{len(values)} values; at most "
                                               f"{MAX_PRESET_VALUES}")
        out.append(Preset(name, tuple(values), overrides))
    return tuple(sorted(out, key=lambda preset: preset.name))


def _host_names(value: tuple[str, ...]) -> None:
    for item in value:
        host, colon, port = item.partition(":")
        if (not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", host)
                or colon and not (port.isdigit() and 1 <= int(port) <= 65535)):
            raise ValueError(f"{show(item)} is not a lower-case host name with an optional :port")


def _thumbor_prefix(value: str) -> None:
    if not re.fullmatch(r"/[A-Za-z0-9_.~-]+(/[A-Za-z0-9_.~-]+)*", value):
        raise ValueError(f"{show(value)} is not a path prefix such as /thumbor (no trailing slash)")


@frozen
class ThumborConfig:
    enabled: bool = setting(
        True, "bool", "Serve thumbor's URL grammar under thumbor.prefix "
        "(/thumbor/<signature>/300x200/smart/media/uploads/a.jpg; docs/thumbor.md).")
    prefix: str = setting(
        "/thumbor", "str", "The path prefix of thumbor URLs; what follows it is what thumbor "
        "itself would receive (its signature covers the part after /<signature>/).",
        _thumbor_prefix)
    security_key: str = setting(
        "", "str", "thumbor's SECURITY_KEY: the HMAC-SHA1 key of signed thumbor URLs. Empty: "
        "no signed thumbor URL is accepted. Never printed.", secret="value")
    allow_unsafe: bool = setting(
        False, "bool", "Accept thumbor URLs starting with /unsafe/ (thumbor's "
        "ALLOW_UNSAFE_URL): anyone may then ask for any size of any image (not with "
        "routes.presets_only: 400 preset_required).")
    allowed_hosts: tuple[str, ...] = setting(
        [], "strlist", "Hosts whose images thumbor URLs may name as their image "
        "(cdn.example.com/a.jpg or https://cdn.example.com/a.jpg): exact lower-case names, "
        "with :port for a port other than 80 and 443. Fetched through the SSRF guard "
        "([ssrf]: private addresses refused, ssrf.allowed_hosts applies too). Empty: the "
        "image is always a path on the backend.", _host_names)


@frozen
class Config:
    server: ServerConfig = section(ServerConfig, "Where the proxy listens and whom it trusts.")
    backend: BackendConfig = section(BackendConfig, "The backend behind the proxy.")
    routes: RoutesConfig = section(RoutesConfig, "Which requests are image requests.")
    cache: CacheConfig = section(CacheConfig, "Result cache and caching headers.")
    processing: ProcessingConfig = section(ProcessingConfig, "Decoding, resizing, encoding.")
    limits: LimitsConfig = section(LimitsConfig, "Bounds on what a request may ask for.")
    validation: ValidationConfig = section(ValidationConfig, "Checks of every image request "
                                           "(the first of the check chain).")
    signing: SigningConfig = section(SigningConfig, "Signed URLs (HMAC-SHA256 `sig` "
                                     "parameter).")
    ratelimit: RateLimitConfig = section(RateLimitConfig, "Token buckets per client IP and "
                                         "tenant.")
    ssrf: SsrfConfig = section(SsrfConfig, "The address filter of every fetch other than the "
                               "backend's.")
    cors: CorsConfig = section(CorsConfig, "CORS headers of image responses.")
    admin: AdminConfig = section(AdminConfig, "The admin listener (purge, stats).")
    warmup: WarmupConfig = section(WarmupConfig, "Background re-rendering of popular variants.")
    jobs: JobsConfig = section(JobsConfig, "The background job queue (warm-up, pre-render, "
                               "refreshes): behind every live request.")
    monitoring: MonitoringConfig = section(MonitoringConfig, "Logs, metrics, health, tracing.")
    plugins: PluginsConfig = section(PluginsConfig, "Which plugins are loaded.")
    alerts: AlertsConfig = section(AlertsConfig, "Rolling performance figures and alert "
                                   "rules evaluated in process.")
    presets: tuple[Preset, ...] = setting(
        [], "presets", "Named transforms, each a [presets.NAME] table of query parameters "
        "(w = 300, h = 300, fit = \"cover\", fmt = \"auto\", any parameter a plugin "
        "registered, by name or alias), asked for as ?preset=NAME on the query scheme; the "
        "cache key is that of the same parameters written out. Each value is checked as the "
        "query parameter would be when the proxy starts (and by check-config). The key "
        "overrides (inherit, allow, deny) overrides routes.preset_overrides for the preset. "
        "From the environment: MEDIAPROXY_PRESETS__THUMB__W=300.")


    thumbor: ThumborConfig = section(ThumborConfig, "The thumbor-compatible endpoint "
                                     "(docs/thumbor.md).")

    #: The sections the loaded plugins declared (``mediaproxy_settings``), checked like the
    #: core's: not a setting itself (no key of its own in the file or the environment).
    plugin_sections: PluginSections = attrs.field(
        factory=lambda: PluginSections(), metadata={"kind": "plugin_sections", "help": ""})

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def plugin_settings(self, name: str) -> Any:
        """The settings of the plugin section ``name`` (``[s3]``): a frozen instance of the
        class the plugin declared, complete (defaults filled in) before any plugin runs,
        replaced as a whole when a reload (SIGHUP) builds a new config. ``KeyError`` when no
        loaded plugin declared it."""
        return self.plugin_sections.get(name)


@frozen
class PluginSections:
    """The plugins' sections of a config: ``(name, settings)`` pairs, sorted by name."""

    sections: tuple[tuple[str, Any], ...] = ()

    def get(self, name: str) -> Any:
        for key, value in self.sections:
            if key == name:
                return value
        raise KeyError(f"no loaded plugin declares the section [{name}]")

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.sections)


def _to_dict(obj) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in attrs.fields(type(obj)):
        value = getattr(obj, f.name)
        if f.metadata.get("kind") == "section":
            out[_key(f)] = _to_dict(value)
        elif f.metadata.get("kind") == "plugin_sections":
            out.update({name: _to_dict(settings) for name, settings in value.sections})
        elif f.metadata.get("kind") == "tables":
            out[_key(f)] = [_to_dict(item) for item in value]
        elif f.metadata.get("kind") == "presets":
            out[_key(f)] = {preset.name: {**dict(preset.values),
                                          PRESET_OVERRIDES_KEY: preset.overrides}
                            for preset in value}
        elif isinstance(value, tuple):
            out[_key(f)] = list(value)
        else:
            out[_key(f)] = value
    return out


REDACTED = "<redacted>"


def redact_url(url: str) -> str:
    """``url`` with the password of its user info (and any ``password=`` query value)
    replaced by ``<redacted>``; the rest (scheme, user, host, port, path) kept."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{hostport}" if sep else f"{userinfo}@{hostport}"
    query = "&".join(
        f"{name}={REDACTED}" if name.lower() in ("password", "pass", "secret", "token") else
        f"{name}{eq}{value}"
        for name, eq, value in (item.partition("=") for item in parts.query.split("&") if item))
    out = url
    if netloc != parts.netloc:
        out = out.replace("//" + parts.netloc, "//" + netloc, 1)
    if query != parts.query:
        head, _, rest = out.partition("?")
        _, hash_sign, fragment = rest.partition("#")
        out = f"{head}?{query}{hash_sign}{fragment}"
    return out


def _redact_value(value: Any, how: str) -> Any:
    if isinstance(value, tuple):
        return tuple(_redact_value(v, how) for v in value)
    if not value:
        return value   # unset stays visibly unset
    return redact_url(value) if how == "url" else REDACTED


def redacted(config):
    """A copy of ``config`` (or of a section) with every setting marked ``secret`` hidden: what
    ``mediaproxy check-config`` prints. The copy is for printing only (it would not pass the
    checks)."""
    changes = {}
    for f in attrs.fields(type(config)):
        value = getattr(config, f.name)
        if f.metadata.get("kind") == "section":
            changes[f.name] = redacted(value)
        elif f.metadata.get("kind") == "plugin_sections":
            changes[f.name] = PluginSections(tuple((name, redacted(settings))
                                                   for name, settings in value.sections))
        elif f.metadata.get("secret"):
            changes[f.name] = _redact_value(value, f.metadata["secret"])
    return attrs.evolve(config, **changes)


def iter_settings(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, attrs.Attribute]]:
    """Every (dotted key, field) of the schema, sections included, in declaration order."""
    for f in attrs.fields(cls):
        if f.metadata.get("kind") == "plugin_sections":
            continue   # not part of the schema: the plugins' classes are walked on their own
        key = f"{prefix}{f.name}"
        yield key, f
        if f.metadata.get("kind") == "section":
            yield from iter_settings(f.metadata["cls"], key + ".")


def _build(cls: type, data: Mapping[str, Any], prefix: str):
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or "config", f"{data!r} is not a table")
    fields = {_key(f): f for f in attrs.fields(cls)
              if f.metadata.get("kind") != "plugin_sections"}
    for name in data:
        if name not in fields:
            raise unknown_key(f"{prefix}{name}", [f"{prefix}{known}" for known in fields])
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        kind = f.metadata["kind"]
        if kind == "section":
            kwargs[f.name] = _build(f.metadata["cls"], data.get(name, {}), key + ".")
            continue
        if name not in data:
            continue
        if kind == "presets":
            kwargs[f.name] = _presets(data[name], key)
            continue
        if kind == "tables":
            value = _tables(f.metadata["item"], data[name], key)
        try:
            if kind != "tables":
                value = _CONVERT[kind](data[name])
            if f.metadata.get("check"):
                f.metadata["check"](value)
        except ValueError as e:
            if f.metadata.get("secret"):   # the message may quote the value
                raise ConfigError(key, "invalid value (not shown: it is a secret)") from None
            if kind == "tables":
                raise ConfigError(key, f"{e} (in [[{key}]] in the file, or "
                                       f"{env_name(key)})") from None
            raise ConfigError(key, str(e)) from None
        kwargs[f.name] = value
    return cls(**kwargs)


def unknown_key(key: str, known: Iterable[str]) -> ConfigError:
    """The error of a key the schema does not have, with the known key it probably means
    (``suggestion``, also in the message)."""
    meant = suggest(key, known)
    error = ConfigError(key, f"unknown key (did you mean {meant}?)" if meant else
                             "unknown key (see docs/configuration.md)")
    error.suggestion = meant
    return error


def _tables(item: type, value: Any, key: str) -> tuple:
    """A TOML array of tables (or a list of dicts) -> a tuple of ``item``; an error names
    ``key[N].field`` and where such a list is set."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(key, f"must be an array of tables ([[{key}]] in the file, or "
                               f"{env_name(key)}='[{{...}}, ...]' in the environment)")
    out = []
    for i, table in enumerate(value):
        try:
            for g in attrs.fields(item):   # a key whose default fails its check is required
                if _key(g) not in table and g.metadata.get("check"):
                    try:
                        g.metadata["check"](g.default)
                    except ValueError:
                        raise ConfigError(f"{key}[{i}].{_key(g)}", "is required") from None
            out.append(_build(item, table, f"{key}[{i}]."))
        except ConfigError as e:
            raise ConfigError(e.key, f"{str(e)[len(e.key) + 2:]} (table {i + 1} of [[{key}]] "
                                     f"in the file, or of {env_name(key)})") from None
    return tuple(out)


def _check_defaults(cls: type = Config, prefix: str = "") -> None:
    # The defaults must pass their own checks; run once at import.
    for key, f in iter_settings(cls):
        if f.metadata.get("check") and f.metadata["kind"] != "section":
            f.metadata["check"](f.default)
        for item in (f.default or ()) if f.metadata["kind"] == "tables" else ():
            for g in attrs.fields(type(item)):
                if g.metadata.get("check"):
                    g.metadata["check"](getattr(item, g.name))


_check_defaults()


def _merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``MEDIAPROXY_A__B__C=value`` -> ``{"a": {"b": {"c": value}}}`` (values stay strings,
    except TOML arrays, which are parsed so ``'["/media/"]'`` works as well as ``/media/``)."""
    return env_tree(environ)[0]


def load_config(path: str | os.PathLike | None = None,
                environ: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None, plugins: Iterable[object] = (),
                load_entrypoints: bool | None = None) -> Config:
    """Build the effective config: defaults < TOML file < environment < ``overrides``.

    Two phases: the core's sections first (they decide which plugins load: ``plugins.*``),
    then the sections the plugins declare (``mediaproxy_settings``): those of the installed
    plugins not disabled (unless ``load_entrypoints`` or plugins.load_entrypoints is false)
    and of ``plugins`` (objects or modules, as the test kit registers them). A table no loaded
    plugin declares is an unknown key, unless a plugin of that name is disabled (then the
    section is not read, like the plugin is not loaded). Any error is a :class:`ConfigError`
    saying where the value came from (``file:line`` or the environment variable)."""
    data: dict[str, Any] = {}
    origins = Origins()
    if path is not None:
        data, spots = read_toml(os.fspath(path))
        origins.add(spots)
    tree, spots = env_tree(os.environ if environ is None else environ)
    data = _merge(data, tree)
    origins.add(spots)
    if overrides:
        data = _merge(data, overrides)
        origins.add(dict.fromkeys(leaves(overrides), ""))
    core_names = {_key(f) for f in attrs.fields(Config)
                  if f.metadata.get("kind") != "plugin_sections"}
    try:
        core = _build(Config, {k: v for k, v in data.items() if k in core_names}, "")
        if load_entrypoints is None:
            load_entrypoints = core.plugins.load_entrypoints
        found = [plugin for _, plugin in entry_point_plugins(core.plugins.disabled)] \
            if load_entrypoints else []
        schemas = plugin_schemas([*found, *plugins], core_names)
        for name in data:
            # the section of a plugin disabled by name is left unread, like the plugin
            if (name not in core_names and name not in schemas
                    and name not in core.plugins.disabled):
                raise unknown_key(name, sorted(core_names | set(schemas)))
        sections = tuple((name, _build(cls, data.get(name, {}), name + "."))
                         for name, cls in sorted(schemas.items()))
    except ConfigError as e:
        raise e.at(origins.of(e.key)) from None
    return attrs.evolve(core, plugin_sections=PluginSections(sections))


def setting_names(config: Config) -> list[str]:
    """The dotted key of every setting of ``config``: the core's and its plugin sections'."""
    names = [key for key, f in iter_settings() if f.metadata["kind"] != "section"]
    for name, settings in config.plugin_sections.sections:
        names += [key for key, f in iter_settings(type(settings), name + ".")
                  if f.metadata["kind"] != "section"]
    return names


def environment_warnings(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``MEDIAPROXY_*`` variable of ``environ`` (default: the process's) that no
    setting of ``config`` (its plugins' included) and no tool reads: a misspelt or outdated
    name would otherwise be ignored in silence. Logged at start, printed by check-config."""
    return unknown_variables(os.environ if environ is None else environ, setting_names(config))


def config_from_dict(data: Mapping[str, Any]) -> Config:
    return _build(Config, data, "")


# -- TOML output (check-config, conf/mediaproxy.toml) ----------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(value)


DEFAULTS_HEADER = """\
# mediaproxy configuration: every key with its default and what it does.
# Generated by `mediaproxy check-config --defaults`; a test keeps it in step with the schema.
# Any key can also be set from the environment: MEDIAPROXY_SECTION__KEY, e.g.
#   MEDIAPROXY_BACKEND__URL=http://127.0.0.1:8000  MEDIAPROXY_CACHE__MEMORY__MAX_BYTES=256MiB
# Sizes accept KiB/MiB/GiB suffixes in the environment and in strings ("64MiB").

"""


def defaults_toml() -> str:
    """The annotated defaults: the text of conf/mediaproxy.toml."""
    return DEFAULTS_HEADER + to_toml(Config(), comments=True)


def to_toml(config: Config, comments: bool = False) -> str:
    """The config as TOML; with ``comments`` every key is preceded by its help text."""
    lines: list[str] = []

    def emit(obj, prefix):
        scalars = [f for f in attrs.fields(type(obj))
                   if f.metadata["kind"] not in ("section", "presets", "plugin_sections") and
                   (f.metadata["kind"] != "tables" or not getattr(obj, f.name))]
        tables = [f for f in attrs.fields(type(obj)) if f.metadata["kind"] == "tables" and
                  getattr(obj, f.name)]
        subs = [f for f in attrs.fields(type(obj)) if f.metadata["kind"] == "section"]
        for f in scalars:
            if comments:
                for line in _wrap(f.metadata["help"]):
                    lines.append(f"# {line}")
            value = getattr(obj, f.name)
            lines.append(f"{_key(f)} = {_toml_value(() if f.metadata['kind'] == 'tables' else value)}")
            if comments:
                lines.append("")
        for f in tables:   # after the scalars: a [[header]] ends the section's own keys
            if comments:
                for line in _wrap(f.metadata["help"]):
                    lines.append(f"# {line}")
            for item in getattr(obj, f.name):
                lines.append(f"[[{prefix}{_key(f)}]]")
                for g in attrs.fields(type(item)):
                    lines.append(f"{_key(g)} = {_toml_value(getattr(item, g.name))}")
                lines.append("")
        for f in subs:
            name = f"{prefix}{f.name}"
            if lines and lines[-1] != "":
                lines.append("")
            if comments:
                lines.append(f"# {f.metadata['help']}")
            lines.append(f"[{name}]")
            emit(getattr(obj, f.name), name + ".")
        for f in attrs.fields(type(obj)):
            if f.metadata["kind"] == "presets":
                emit_presets(f, getattr(obj, f.name), prefix)
        for f in attrs.fields(type(obj)):
            for name, settings in (getattr(obj, f.name).sections
                                   if f.metadata["kind"] == "plugin_sections" else ()):
                if lines and lines[-1] != "":
                    lines.append("")
                lines.append(f"[{name}]")
                emit(settings, name + ".")

    def emit_presets(f, presets, prefix):
        if lines and lines[-1] != "":
            lines.append("")
        if comments:
            lines.extend(f"# {line}" for line in _wrap(f.metadata["help"]))
            if not presets:
                lines.extend(["# For example:", f"# [{prefix}{_key(f)}.thumb]",
                              '# w = 300', '# h = 300', '# fit = "cover"', '# fmt = "auto"'])
        for preset in presets:
            lines.append(f"[{prefix}{_key(f)}.{preset.name}]")
            lines.extend(f"{spelling} = {_toml_value(value)}" for spelling, value in preset.values)
            lines.append(f"{PRESET_OVERRIDES_KEY} = {_toml_value(preset.overrides)}")
            lines.append("")

    emit(config, "")
    return "\n".join(lines).rstrip() + "\n"


def _wrap(text: str, width: int = 96) -> list[str]:
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        out.append(line)
    return out


def to_markdown() -> str:
    """The reference table of every key (docs/configuration.md embeds it)."""
    out = []
    defaults = Config()
    for key, f in iter_settings():
        if f.metadata["kind"] == "section":
            out.append(f"\n### `{key}`\n\n{f.metadata['help']}\n")
            out.append("| key | default | environment | meaning |\n|---|---|---|---|")
            continue
        value: Any = defaults
        for part in key.split("."):
            value = getattr(value, part)
        env = env_name(key)
        help_text = f.metadata["help"].replace("|", "\\|")
        if f.metadata["kind"] == "presets":
            out.append(f"\n### `{key}`\n\n{help_text}\n")
            out.append("| key | default | environment | meaning |\n|---|---|---|---|")
            out.append(f"| `{key}.NAME.PARAM` | none | `{env_name(key)}__NAME__PARAM` | A "
                       f"value of the preset NAME: any transform parameter (w, h, fit, pos, "
                       f"bg, q, fmt, enlarge, trim, or a plugin's), by name or alias, checked "
                       f"as the query parameter is. |")
            out.append(f"| `{key}.NAME.{PRESET_OVERRIDES_KEY}` | `\"inherit\"` | "
                       f"`{env_name(key)}__NAME__{PRESET_OVERRIDES_KEY.upper()}` | Whether "
                       f"explicit parameters may override this preset's values: inherit "
                       f"(routes.preset_overrides decides), allow or deny. |")
            continue
        if f.metadata["kind"] != "tables":
            out.append(f"| `{key}` | `{_toml_value(value)}` | `{env}` | {help_text} |")
            continue
        out.append(f"| `{key}` | {len(value)} tables (`[[{key}]]` in conf/mediaproxy.toml) "
                   f"| `{env}` (a TOML array of inline tables) | {help_text} |")
        for g in attrs.fields(f.metadata["item"]):
            item_help = g.metadata["help"].replace("|", "\\|")
            out.append(f"| `{key}[N].{_key(g)}` | `{_toml_value(g.default)}` | | {item_help} |")
    return "\n".join(out).strip() + "\n"
