"""The tenant of a source path (``/media/{tenant}/uploads/...``): it prefixes every cache key of
that source, so a tenant purge takes exactly its own entries."""

import pytest

from mediaproxy.cache.keys import source_prefix, tenant_of


@pytest.mark.parametrize("path, tenant", [
    ("/media/shop_1/uploads/a.jpg", "shop_1"),
    ("/media/_shop/uploads/a/b/c.png", "_shop"),
    ("/media/shop/uploads", "shop"),            # the shortest path that names one
    ("/media/shop/uploads/", "shop"),
    ("/media/shop", "public"),                  # one segment short
    ("/media/shop/", "public"),
    ("/media/uploads/a.jpg", "public"),         # the public uploads
    ("/media/shop/other/a.jpg", "public"),      # not under uploads/
    ("/static/shop/uploads/a.jpg", "public"),   # not under media/
    ("/media/9shop/uploads/a.jpg", "public"),   # a tenant starts with a letter or _
    ("/media/Shop/uploads/a.jpg", "public"),    # lower case only
    ("/media/shop-1/uploads/a.jpg", "public"),  # letters, digits and _ only
    ("/media/" + "a" * 63 + "/uploads/x.jpg", "a" * 63),
    ("/media/" + "a" * 64 + "/uploads/x.jpg", "public"),   # at most 63 characters
])
def test_the_tenant_of_a_path(path, tenant):
    assert tenant_of(path) == tenant


def test_the_tenant_prefixes_the_key_of_every_variant_of_its_sources():
    assert source_prefix("shop", "/media/shop/uploads/a.jpg").startswith("shop:")
    assert source_prefix("shop", "/media/shop/uploads/a.jpg") == \
        source_prefix("shop", "/media/shop//uploads/./a.jpg")   # the same source, normalised
    assert source_prefix("shop", "/media/shop/uploads/a.jpg") != \
        source_prefix("shop", "/media/shop/uploads/b.jpg")
