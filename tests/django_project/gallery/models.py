from django.db import models


class Photo(models.Model):
    """A picture as a shop stores it: an ImageField. The tests never save one (no database):
    an unsaved instance's ``image`` is the same FieldFile a saved one gives the template."""

    slug = models.SlugField()
    title = models.CharField(max_length=100)
    image = models.ImageField(upload_to="uploads/")

    class Meta:
        app_label = "gallery"
