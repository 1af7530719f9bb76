"""
Settings of the Django project the tests run behind a real proxy (tests/test_django.py and
tests/test_django_browser.py): one gallery page of images stored as ImageField values, served
with its media by Django itself; the proxy stands in front of it as it would in production.

Run it by hand: ``DJANGO_SETTINGS_MODULE=tests.django_project.settings django-admin runserver``
from the repository root, then ``mediaproxy run`` with ``backend.url`` pointing at it.
"""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "tests.django_project.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "mediaproxy.django",
    "tests.django_project.gallery",
]
DATABASES = {}
USE_TZ = True
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [BASE_DIR / "templates"],
    "OPTIONS": {"builtins": []},
}]
MEDIA_URL = "/media/"
MEDIA_ROOT = BASE_DIR / "media"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

#: The proxy is this site's own origin (it passes the pages through): relative image URLs.
#: A test sets "KEY" (override_settings) when the proxy it runs checks signatures.
MEDIAPROXY = {
    "URL": "",
    "KEY": None,
    "PRESETS": {"thumb": {"w": 150, "h": 150, "fit": "cover"}},
    "FORMATS": ["avif", "webp"],
}
