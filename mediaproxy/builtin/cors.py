"""
CORS and Cross-Origin-Resource-Policy headers on image responses, from the ``cors`` section.
"""

from __future__ import annotations

from .. import hookimpl


def cors_headers(config, origin: str | None) -> list[tuple[str, str]]:
    headers = []
    allowed = config.allow_origins
    if allowed:
        if "*" in allowed:
            headers.append(("Access-Control-Allow-Origin", "*"))
        else:
            # The answer depends on Origin whatever it is, absent included: a shared cache that
            # kept an answer without the header (an <img> tag's) must not give it to a fetch()
            # from a listed origin, which the browser would then refuse.
            if origin and origin in allowed:
                headers.append(("Access-Control-Allow-Origin", origin))
            headers.append(("Vary", "Origin"))
        if headers and headers[0][0] == "Access-Control-Allow-Origin":
            headers.append(("Access-Control-Allow-Methods", ", ".join(config.allow_methods)))
            headers.append(("Access-Control-Max-Age", str(config.max_age)))
            headers.append(("Access-Control-Expose-Headers",
                            "ETag, X-Cache, Cache-Status, X-Correlation-ID"))
    if config.resource_policy:
        headers.append(("Cross-Origin-Resource-Policy", config.resource_policy))
    return headers


_memo: dict = {}


@hookimpl
def mediaproxy_response_headers(image_request, response, request, runtime):
    # The answer depends only on the config and the Origin header: keep the last few.
    origin = request.header("origin")
    key = (id(runtime.config.cors), origin)
    headers = _memo.get(key)
    if headers is None:
        if len(_memo) > 256:
            _memo.clear()
        headers = _memo[key] = cors_headers(runtime.config.cors, origin)
    return headers
