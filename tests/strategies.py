"""Hypothesis strategies shared by the tests (configs, query strings, paths)."""

from __future__ import annotations

import attrs
from hypothesis import strategies as st

from mediaproxy import config as cfg

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


def _value_strategy(f: attrs.Attribute, owner: str):
    """Values that pass the field's check, by probing candidates against it."""
    kind, check = f.metadata["kind"], f.metadata.get("check")
    if kind == "tables":   # an array of tables: each item built like a section, names unique
        return st.lists(_section(f.metadata["item"]), max_size=2).map(lambda items: tuple(
            attrs.evolve(item, name=f"r{i}_{item.name}") for i, item in enumerate(items)))
    if kind == "presets":   # {name: values}: the shape the schema checks (values as written)
        value = st.one_of(st.integers(0, 10**6), st.booleans(), st.sampled_from(
            ["cover", "webp", "ffffff80", "300", ""]))
        return st.dictionaries(
            st.from_regex(cfg.PRESET_NAME, fullmatch=True).filter(lambda n: len(n) <= 12),
            st.tuples(st.dictionaries(st.sampled_from(["w", "h", "fit", "q", "bg", "width"]),
                                      value, max_size=4),
                      st.sampled_from(["inherit", "allow", "deny"])), max_size=3).map(
            lambda presets: tuple(cfg.Preset(name, tuple(values.items()), overrides)
                                  for name, (values, overrides) in sorted(presets.items())))
    base = {
        "bool": st.booleans(),
        "int": st.integers(min_value=0, max_value=2**40),
        "float": st.floats(min_value=0.01, max_value=1e6, allow_nan=False).map(
            lambda v: round(v, 3)),
        "str": _text,
        "strlist": st.lists(_text, max_size=4).map(tuple),
        "workers": st.one_of(st.just("auto"), st.integers(min_value=0, max_value=64)),
    }[kind]
    special = {
        "ServerConfig.listen": st.lists(st.integers(1, 65535).map(lambda p: f"tcp:{p}"), min_size=1,
                           max_size=3).map(tuple),
        "trusted_proxies": st.lists(st.sampled_from(
            ["127.0.0.1", "10.0.0.0/8", "::1", "192.168.1.0/24"]), max_size=3).map(tuple),
        "url": st.tuples(st.sampled_from(["http", "https"]),
                         st.sampled_from(["127.0.0.1", "backend", "example.org"]),
                         st.integers(1, 65535)).map(lambda t: f"{t[0]}://{t[1]}:{t[2]}"),
        "shards": st.lists(st.sampled_from(["redis://127.0.0.1:6379/0", "redis://h:1/2"]),
                           max_size=2).map(tuple),
        "sentinels": st.lists(st.sampled_from(["127.0.0.1:26379", "s1:26379"]),
                              max_size=2).map(tuple),
        "compat_prefix": st.sampled_from(["/media_stream-image/", "/img/"]),
        "compat_placeholder_status": st.sampled_from([0, 200, 404, 599]),
        "prefixes": st.lists(st.sampled_from(["/media/", "/static/", "/uploads/a/"]),
                             min_size=1, max_size=3).map(tuple),
        "MonitoringConfig.listen": st.sampled_from(["", "tcp:9108:interface=127.0.0.1"]),
        "health_path": st.sampled_from(["/health", "/healthz", "/status/health"]),
        "live_path": st.sampled_from(["/health/live", "/livez"]),
        "ready_path": st.sampled_from(["/health/ready", "/readyz"]),
        "health_prefix": st.sampled_from(["", "/_mediaproxy", "/ops"]),
        "health_backend_probe": st.sampled_from(["", "/", "/healthz/"]),
        "RedisCacheConfig.url": st.sampled_from(["", "redis://127.0.0.1:6379/0"]),
        "max_source_bytes_by_format": st.lists(st.tuples(
            st.sampled_from(cfg.SOURCE_FORMATS), st.integers(1, 2**34)).map(
            lambda t: f"{t[0]}={t[1]}"), max_size=4).map(tuple),
        "source_formats": st.lists(st.sampled_from(cfg.SOURCE_FORMATS), max_size=4).map(tuple),
        "source_prefixes": st.lists(st.sampled_from(["/media/", "/static/images/"]),
                                    max_size=2).map(tuple),
        "SigningConfig.keys": st.lists(st.text(st.characters(codec="ascii", min_codepoint=33,
                                                             max_codepoint=126),
                                               min_size=16, max_size=40), max_size=3).map(tuple),
        "exempt_routes": st.lists(st.sampled_from(["compat", "query"]), max_size=2).map(tuple),
        "RateLimitConfig.exempt": st.lists(st.sampled_from(
            ["127.0.0.1", "10.0.0.0/8", "::1"]), max_size=2).map(tuple),
        "allow_networks": st.lists(st.sampled_from(
            ["10.1.2.3", "192.168.0.0/16", "fd00::/8"]), max_size=2).map(tuple),
        "AlertRule.name": st.sampled_from(["image_slow", "a", "disk_low2"]),
        "AlertRule.remedy": st.text(st.characters(codec="utf-8", exclude_categories=("Cs",),
                                                  exclude_characters="\r\n"), max_size=8),
        "AlertRule.expr": st.tuples(
            st.sampled_from(sorted(cfg.ALERT_FIGURES)), st.sampled_from(cfg.OPERATORS),
            st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 3)),
            st.sampled_from(["", " "])).map(lambda t: f"{t[0]}{t[3]}{t[1]}{t[3]}{t[2]!r}"),
        "allowed_hosts": st.lists(st.sampled_from(
            ["cdn.example.com", "*.example.org"]), max_size=2).map(tuple),
        "prerender": st.lists(st.sampled_from(
            ["w=300", "w=300&h=300&fit=cover&fmt=webp", "h=120&q=70"]), max_size=3).map(tuple),
        "request_id_headers": st.lists(st.sampled_from(
            ["X-Correlation-ID", "X-Request-ID", "X-Amzn-Trace-Id"]), max_size=3).map(tuple),
        "ThumborConfig.prefix": st.sampled_from(["/thumbor", "/t", "/img/thumbor"]),
        # fields whose check refuses most random text: drawn from their valid shape, so that
        # the filter below is not what makes the examples (hypothesis gives up on too many)
        "ThumborConfig.allowed_hosts": st.lists(st.sampled_from(
            ["cdn.example.com", "img.example.org:8080", "127.0.0.1"]), max_size=2).map(tuple),
        "server_header": st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                                 max_size=20),
        "cache_status": st.sampled_from(["", "mediaproxy", "edge-1", "cdn.example"]),
    }
    special = special.get(f"{owner}.{f.name}", special.get(f.name, base))
    if check is None:
        return special
    if hasattr(check, "choices"):
        return st.sampled_from(check.choices)
    if hasattr(check, "low"):
        high = check.high if check.high is not None else (2**40 if kind == "int" else 1e6)
        if kind == "int":
            return st.integers(min_value=int(check.low), max_value=int(high))
        return st.floats(min_value=check.low, max_value=high, allow_nan=False).map(
            lambda v: max(round(v, 3), check.low))

    def ok(value):
        try:
            check(value)
            return True
        except ValueError:
            return False

    return special.filter(ok)


def _section(cls):
    fields = {}
    for f in attrs.fields(cls):
        if f.metadata["kind"] == "plugin_sections":
            continue   # no setting: the plugins' sections, filled by the loader
        if f.metadata["kind"] == "section":
            fields[f.name] = _section(f.metadata["cls"])
        else:
            fields[f.name] = _value_strategy(f, cls.__name__)
    return st.builds(cls, **fields)


configs = _section(cfg.Config)
