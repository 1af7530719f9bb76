"""
mediaproxy-s3: a result-cache layer (and a home for originals) on any S3-compatible object
store, so N nodes share one store. Installed with pip, found through the ``mediaproxy``
entry-point group under the name ``s3``; disable it with ``MEDIAPROXY_PLUGINS__DISABLED=s3``.

Settings: the ``[s3]`` section of mediaproxy's config file (or ``MEDIAPROXY_S3__ENDPOINT``,
``MEDIAPROXY_S3__BUCKET``, ...), declared by :meth:`S3Plugin.mediaproxy_settings`, see
:mod:`mediaproxy_s3.settings`. Without an endpoint the plugin does nothing.

The entry point is :data:`plugin`, reading its settings from the proxy's config; tests (and
embedders) may register ``S3Plugin(settings)`` instead.
"""

from __future__ import annotations

import os

from twisted.application import service

from mediaproxy import ConfigError, HealthStatus, find_layer, hookimpl

from .client import S3Client, StoreError, StoreUnavailable
from .layer import S3Layer
from .settings import SECTION, S3Settings, settings_from

__all__ = ["S3Plugin", "S3Health", "S3Layer", "S3Client", "S3Settings", "StoreError", "StoreUnavailable",
           "settings_from", "plugin"]


class S3Service(service.Service):
    """Closes the layer's persistent connections when the proxy stops."""

    name = "mediaproxy-s3"

    def __init__(self, layer: S3Layer):
        self.layer = layer

    def stopService(self):
        super().stopService()
        return self.layer.client.close()


class S3Health:
    """Health indicator: a signed HEAD of the bucket. Not critical: the store is a cache
    layer, so a store that is down makes the proxy degraded (``/health`` still 200), not
    unhealthy."""

    name = "s3"

    def __init__(self, layer: S3Layer):
        self.layer = layer

    def check(self):
        client = self.layer.client
        data = {"endpoint": client.endpoint, "bucket": client.bucket}

        def up(answer):
            if answer.status == 404:
                return HealthStatus(self.name, False, f"no bucket {client.bucket!r}", data=data)
            return HealthStatus(self.name, True, "reachable", data=data)

        def down(failure):
            return HealthStatus(self.name, False, failure.getErrorMessage(), data=data)

        return client.request("HEAD").addCallbacks(up, down)


class S3Plugin:
    """The plugin: ``settings`` given, or (None) the ``[s3]`` section of the proxy's config
    (``runtime.config.plugin_settings("s3")``) when the proxy builds its cache layers."""

    def __init__(self, settings: S3Settings | None = None):
        self.settings = settings

    def layer_for(self, runtime) -> S3Layer | None:
        settings = (self.settings if self.settings is not None
                    else runtime.config.plugin_settings(SECTION))
        if not settings.endpoint:
            return None
        if not settings.bucket:
            raise ConfigError("s3.bucket", "is required when s3.endpoint is set")
        client = S3Client(
            endpoint=settings.endpoint, bucket=settings.bucket, region=settings.region,
            access_key=settings.access_key or os.environ.get("AWS_ACCESS_KEY_ID", ""),
            secret_key=settings.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            reactor=runtime.reactor, timeout=settings.timeout,
            connect_timeout=settings.connect_timeout,
            max_connections=settings.max_connections,
            failures_to_open=settings.failures_to_open, retry_after=settings.retry_after,
            threadpool=runtime.threadpool)
        return S3Layer(client, ttl=settings.ttl, prefix=settings.prefix,
                       max_item_bytes=settings.max_item_bytes, keeps_sources=settings.sources,
                       reactor=runtime.reactor, threadpool=runtime.threadpool)

    @hookimpl
    def mediaproxy_settings(self):
        return {SECTION: S3Settings}

    @hookimpl
    def mediaproxy_cache_layers(self, runtime):
        layer = self.layer_for(runtime)
        return [layer] if layer is not None else []

    @hookimpl
    def mediaproxy_health_indicators(self, runtime):
        layer = find_layer(runtime, S3Layer)
        return [S3Health(layer)] if layer is not None else []

    @hookimpl
    def mediaproxy_services(self, runtime):
        layer = find_layer(runtime, S3Layer)
        return [S3Service(layer)] if layer is not None else []


#: The entry point's object: settings from the proxy's config.
plugin = S3Plugin()
