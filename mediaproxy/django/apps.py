"""The Django app (``INSTALLED_APPS = [..., "mediaproxy.django"]``): only for the template tags."""

from django.apps import AppConfig


class MediaproxyConfig(AppConfig):
    name = "mediaproxy.django"
    label = "mediaproxy"
    verbose_name = "mediaproxy"
