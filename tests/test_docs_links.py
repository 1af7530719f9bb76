"""
Every link of the documentation resolves (tests/doclinks.py, also ``tox -e docs``): relative
files and folders exist, anchors name a heading of the Markdown file they point into, external
URLs are well formed (syntax only: no network). And the checker itself finds each kind of
broken link in a small tree made here.
"""

from tests.doclinks import anchors, check, slug


def test_every_link_of_the_documentation_resolves():
    assert check() == []


def test_headings_are_slugged_as_github_slugs_them():
    # the expected anchors are GitHub's for these headings (written out by hand)
    assert slug("Redis (`cache.redis`)") == "redis-cacheredis"
    assert slug("4. The grooveshop-media-stream routes") == "4-the-grooveshop-media-stream-routes"
    assert slug("mediaproxy_health_indicators") == "mediaproxy_health_indicators"
    assert slug("See [the docs](x.md) now!") == "see-the-docs-now"
    assert anchors("# Logs\n\n## Logs\n```\n# not a heading\n```\n<a id=\"here\"></a>\n") == {
        "logs", "logs-1", "here"}


def test_each_kind_of_broken_link_is_reported_with_its_line(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "a.toml").write_text("")
    (tmp_path / "README.md").write_text(
        "# Top\n"
        "[ok](docs/guide.md#part-two) [ok](conf/a.toml) [ok](docs/) [ok](#top)\n"
        "[gone](docs/missing.md)\n"
        "[anchor](docs/guide.md#part-three)\n"
        "`[in code](nowhere.md)`\n"
        "```\n[in a block](nowhere.md)\n```\n"
        "[bad url](https:///no-host) [good](https://pypi.org/project/blurhash/)\n"
        "[ref]: docs/also-missing.md\n")
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n## Part two\n[up](../README.md#top) [toml anchor](../conf/a.toml#x)\n"
        "<img src=\"pic.png\">\n")
    assert check(tmp_path) == [
        "README.md:3: docs/missing.md: no such file",
        "README.md:4: docs/guide.md#part-three: no heading or anchor #part-three in "
        "docs/guide.md",
        "README.md:9: https:///no-host: not a well-formed http(s) URL",
        "README.md:10: docs/also-missing.md: no such file",
        "docs/guide.md:3: ../conf/a.toml#x: an anchor into a file that is not Markdown",
        "docs/guide.md:4: pic.png: no such file",
    ]
