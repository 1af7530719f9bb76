from django.urls import re_path
from django.views.static import serve

from .gallery.views import gallery
from .settings import MEDIA_ROOT

urlpatterns = [
    re_path(r"^gallery/$", gallery, name="gallery"),
    # Django serves its own media here (the proxy's backend); production would use a web server
    re_path(r"^media/(?P<path>.*)$", serve, {"document_root": MEDIA_ROOT}),
]
