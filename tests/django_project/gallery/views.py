from django.shortcuts import render

from .models import Photo

#: The files are in tests/django_project/media/uploads (made with mediaproxy.testing.make_image).
PHOTOS = (
    ("landscape", "A landscape", "uploads/landscape.jpg"),
    ("logo", "A logo with alpha", "uploads/logo.png"),
    ("spaced", "A name that needs quoting", "uploads/summer café.jpg"),
)


def gallery(request):
    photos = [Photo(slug=slug, title=title, image=name) for slug, title, name in PHOTOS]
    return render(request, "gallery.html", {"photos": photos})
