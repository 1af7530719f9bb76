"""
The hook contract: every hook mediaproxy calls, grouped by when it fires.

Rules that hold for all of them:

* pluggy calls are synchronous. A hook marked *firstresult* must decide **synchronously**
  whether it answers: returning anything but ``None`` (a Deferred included) ends the call.
  Asynchronous work lives in the objects the hooks hand over (cache layers, fetch Deferreds,
  the pipeline's Deferred), which the core drives.
* Unless a spec says otherwise a hook runs **in the reactor thread** and must not block: no
  disk or network I/O, no image decoding. Work that takes time goes to
  ``runtime.run_in_pool`` (CPU) or returns a Deferred where the spec allows one.
* Values passed in are frozen attrs instances (:mod:`mediaproxy.models`); hooks return new
  values rather than changing what they got.
* Built-in behaviour is implemented by plugins in :mod:`mediaproxy.builtin`, registered
  ``trylast`` where a third party may want to take over, and each can be disabled by name
  (``plugins.disabled``).

Every hook here is documented in ``docs/plugin_hooks.md``; a test fails when one is missing.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mediaproxy")


# -- lifecycle ---------------------------------------------------------------------------------

@hookspec
def mediaproxy_configure(runtime):
    """The plugin manager is complete and the config validated; the reactor is not yet serving.

    Stateful plugins create their objects here and register them with
    ``runtime.pm.register(obj, name)``. Runs once per process in the reactor thread, before
    any request. Return value ignored; may not return a Deferred (start asynchronous work from
    a service, see :func:`mediaproxy_services`).
    """


@hookspec
def mediaproxy_services(runtime):
    """Return a list of :class:`twisted.application.service.IService` to run with the daemon.

    They are started after the listening ports exist and stopped, in reverse order, on
    shutdown (``stopService`` may return a Deferred). Background jobs (cache cleanup, warm-up,
    metrics listeners, Redis connections) live here. Reactor thread.
    """


@hookspec
def mediaproxy_config_reloaded(runtime, old, new):
    """The configuration changed (``SIGHUP`` re-reads the file and environment).

    ``old`` and ``new`` are :class:`mediaproxy.config.Config`; ``runtime.config`` is already
    ``new``. Plugins that copied settings refresh them. Reactor thread; return value ignored.
    Settings of the listening endpoints and the thread pool size apply only after a restart.
    """


@hookspec
def mediaproxy_settings():
    """Return ``{section: SettingsClass}``: the plugin's own sections of the config file.

    Each class is a frozen attrs class of ``mediaproxy.setting(...)`` fields (sections
    within it by ``mediaproxy.section(...)``). The proxy reads ``[section]`` from the same
    TOML file and ``MEDIAPROXY_SECTION__KEY`` from the environment, checks it like the core's
    sections (errors name the file and line or the variable) and hands the result to every
    plugin as ``runtime.config.plugin_settings("section")``, complete before any hook that
    gets the runtime runs. Called when the config is loaded (at start, by check-config, on a
    reload), before ``mediaproxy_configure``, in the thread that loads the config (the main
    thread, or the reactor thread on a reload): it must only return the classes. A section no
    loaded plugin declares is an unknown key; a name of the core's or of another plugin's is
    an error.
    """


@hookspec
def mediaproxy_unconfigure(runtime):
    """The daemon is stopping; release what :func:`mediaproxy_configure` created.

    Reactor thread; return value ignored.
    """


# -- request parsing and checks ----------------------------------------------------------------

@hookspec
def mediaproxy_params(config):
    """Return a list of :class:`mediaproxy.models.Param` this plugin contributes.

    Routes parse transform parameters through this registry, and the cache key is built from
    each parameter's ``key(value)``, so a plugin adding a parameter (a preset, a watermark)
    changes the key only by what its parameter contributes. Names must be unique: a duplicate
    fails at start. Called once at start and after a config reload, reactor thread.
    """


@hookspec(firstresult=True)
def mediaproxy_match_request(request, runtime):
    """Decide whether ``request`` (:class:`~mediaproxy.models.RequestInfo`) is an image request.

    Return an :class:`~mediaproxy.models.ImageRequest` to handle it as one, a
    :class:`~mediaproxy.models.Rejection` to refuse it (a bad parameter: 400 with the
    parameter named), or ``None`` to let other plugins decide; when all return ``None`` the
    request passes through to the backend unchanged. *firstresult*, synchronous, reactor
    thread. Must not raise for any input: bad input is a Rejection.
    """


@hookspec(firstresult=True)
def mediaproxy_check_request(image_request, request, runtime):
    """The check chain: return a :class:`~mediaproxy.models.Rejection` to refuse, ``None`` to
    let the request go on.

    Every plugin is asked in turn (validation, signatures, rate limits ...) until one refuses.
    The core asks it for every image request **before** ``mediaproxy_handle_image``, so a
    plugin that takes over the image protocol cannot skip it. *firstresult*, synchronous,
    reactor thread: state it needs (rate-limit buckets) is held in memory and synchronised in
    the background, never looked up per request.
    """


@hookspec(firstresult=True)
def mediaproxy_check_passthrough(request, runtime):
    """Asked before a request that is not an image request is forwarded to the backend.

    Return a :class:`~mediaproxy.models.Rejection` to answer it instead (the built-in rate
    limiter does when ``ratelimit.passthrough_rate`` is set: 429), or ``None`` to forward it.
    ``request`` is the :class:`~mediaproxy.models.RequestInfo`. *firstresult*, synchronous,
    reactor thread; it must be cheap, it runs for every pass-through request.
    """


@hookspec(firstresult=True)
def mediaproxy_admit_transform(image_request, request, runtime):
    """May this request start a transform? Asked by the pipeline on a cache miss, right
    before it fetches and renders, and only by the request that would lead the work (a
    request that joins a transform already under way, or is answered from a cache, is never
    asked, so it never pays for one).

    Return a :class:`~mediaproxy.models.Rejection` to refuse (the built-in rate limiter's
    expensive token: 429 with ``Retry-After``), or ``None`` to admit. A third-party limiter
    (a quota per API key, a cost budget) implements this hook. *firstresult*, synchronous,
    reactor thread.
    """


@hookspec(firstresult=True)
def mediaproxy_sign_url(url, image_request, expires, runtime):
    """Return ``url`` signed the way this proxy will check it, or ``None`` when this plugin
    does not sign.

    ``url`` is a path with query (or an absolute URL), ``image_request`` the
    :class:`~mediaproxy.models.ImageRequest` the routes matched it to, ``expires`` a Unix time
    or ``None``. The built-in signing plugin answers with the first of ``signing.keys``
    (``mediaproxy sign`` calls this hook); raise ``ValueError`` with a message for the user
    when it cannot be signed. *firstresult*, synchronous, in the thread that asks (the
    reactor thread, or the CLI before any reactor runs).
    """


# -- cache -------------------------------------------------------------------------------------

@hookspec
def mediaproxy_cache_layers(runtime):
    """Return a list of cache layers (:class:`mediaproxy.cache.layered.CacheLayer`).

    Layers are read fastest-first (ascending ``order``; the memory layer is 10) and written
    all; a hit back-fills the faster layers. Layer methods return Deferreds. Called once at
    start, reactor thread.
    """


# -- sources -----------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mediaproxy_fetch_source(image_request, request, runtime):
    """Fetch the original image of ``image_request``.

    Return a Deferred that fires with a :class:`~mediaproxy.models.SourceImage` or fails with
    :class:`~mediaproxy.models.SourceError` (404, 502, 504, 413...), or ``None`` when this
    plugin does not serve that source. The built-in fetches ``image_request.source_path`` from
    the configured backend (``trylast``). *firstresult*, decided synchronously, reactor thread;
    the Deferred may fire later.
    """


# -- transform ---------------------------------------------------------------------------------

@hookspec
def mediaproxy_transform_steps(image_request, spec):
    """Return :class:`~mediaproxy.models.TransformStep` objects to run on this request's image.

    Called in the reactor thread, per request, to collect the steps; the steps' ``apply``
    functions then run **in the transform thread pool**, in ``order`` (resize is 500), on the
    decoded, oriented image. ``apply`` must be pure: no reactor, no plugin manager, no
    logging. Return ``None`` or an empty list when nothing applies.
    """


@hookspec(firstresult=True)
def mediaproxy_output(image_request, spec):
    """Return an :class:`~mediaproxy.models.Output` to answer ``image_request`` with something
    other than the encoded image (a placeholder hash, a colour, a tiny preview), or ``None``.

    Asked by the pipeline on a cache miss, after :func:`mediaproxy_transform_steps`, with the
    request's :class:`~mediaproxy.models.TransformSpec`. The output's ``encode`` runs in the
    transform thread pool under the memory budget, estimated on the output's ``spec`` (its
    own, smaller one, when it gives one). What makes the answer differ must already be in the
    cache key: a parameter of the plugin's (:func:`mediaproxy_params`). *firstresult*,
    synchronous, reactor thread.
    """


# -- responses ---------------------------------------------------------------------------------

@hookspec(firstresult=True)
def mediaproxy_handle_image(image_request, request, runtime):
    """The image protocol: answer ``image_request`` with a Deferred that fires with an
    :class:`~mediaproxy.models.ImageResponse`.

    The core has run the check chain (:func:`mediaproxy_check_request`) before, so only
    requests that passed it get here. The built-in pipeline (``trylast``) runs the cache lookup,
    the coalesced fetch, the transform and the store. Wrap it with ``@hookimpl(wrapper=True)``
    to time or observe every checked image request (the wrapper gets the Deferred the pipeline
    returned and must return one). *firstresult*, reactor thread.
    """


@hookspec
def mediaproxy_response_headers(image_request, response, request, runtime):
    """Return a list of ``(name, value)`` headers to add to an image response.

    ``response`` is the :class:`~mediaproxy.models.ImageResponse` about to be written (``None``
    for a Rejection). CORS and Cross-Origin-Resource-Policy are built in this way. A
    ``Cache-Control`` returned here (spelled so) replaces the response's own: the signing
    plugin lowers the max-age of a URL that expires to the seconds it has left. Reactor
    thread, synchronous.
    """


# -- monitoring --------------------------------------------------------------------------------

@hookspec
def mediaproxy_event(event):
    """Observe an :class:`~mediaproxy.models.Event` (a count or a duration with labels).

    Metrics plugins turn these into Prometheus series. Reactor thread; must be cheap and must
    not raise. Return value ignored.
    """


@hookspec
def mediaproxy_health_indicators(runtime):
    """Return a list of health indicators: objects with a ``name`` and a ``check()`` that
    returns a :class:`~mediaproxy.models.HealthStatus` or a Deferred firing with one.

    Called once at start, reactor thread; ``check`` is called once per round of the health
    snapshot (every ``monitoring.health_interval`` seconds, in the background), bounded by
    ``monitoring.health_timeout`` (no answer by then: reported not ok, "timed out"). Not ok and
    ``critical``: unhealthy (503 on ``/health``); not ok otherwise: degraded (200).
    """


@hookspec
def mediaproxy_metrics_collectors(runtime):
    """Return a list of prometheus-client collectors (objects with ``collect()``) to register
    in the runtime's metrics registry, served at ``/metrics``: how a plugin adds series of its
    own (its names prefixed ``mediaproxy_`` and its labels bounded).

    Called once at start, reactor thread; ``collect`` is called per scrape.
    """


# -- admin -------------------------------------------------------------------------------------

@hookspec
def mediaproxy_admin_views(runtime):
    """Return a dict ``{(method, path): view}`` of calls this plugin adds to the admin
    listener (``admin.listen``), e.g. ``{("GET", "/admin/alerts"): view}``.

    ``view(body)`` gets the request's JSON object (``{}`` without a body; the query parameters
    are merged in as strings) and returns ``(status, json_body)`` or a Deferred firing with
    one. The admin listener checks the token first and serves its own calls before these; a
    path claimed twice fails at start. Called once when the admin listener is made; views run
    in the reactor thread and must not block.
    """


# -- thumbor endpoint --------------------------------------------------------------------------

@hookspec
def mediaproxy_thumbor_filters(config):
    """Return a dict ``{name: apply}`` of filters this plugin adds to the thumbor endpoint
    (``/thumbor/.../filters:name(a,b)/...``; docs/thumbor.md), for instance ``watermark``.

    ``apply(args, params)`` gets the filter's arguments as a tuple of strings (percent-decoded,
    split on commas) and the request's parameters as a mutable dict (every registered
    :class:`~mediaproxy.models.Param` by name, canonical values), and sets the parameters the
    filter means (register them with :func:`mediaproxy_params`, so they enter the cache key).
    It raises ``ValueError`` with a message for the client when the arguments are invalid
    (a 400 naming the filter). Called when the configuration is loaded or reloaded; ``apply``
    runs in the reactor thread and must be cheap. A built-in filter of the same name is
    replaced; filters nobody provides are ignored, as thumbor ignores them.
    """
