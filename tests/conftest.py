import pytest

from mediaproxy.testing import reactor_thread

# redis_server / redis_servers: real redis-server processes on free ports; django_site: the
# Django test project served for real; browser: Debian's chromium driven by Playwright.
pytest_plugins = ("tests.redis_server", "tests.django_project.serve", "tests.browser")


# -- pass-through and fetch tests: a real reactor and real origins --------------------------

@pytest.fixture(scope="session")
def live_reactor():
    """The global reactor, running in a daemon thread for the whole session."""
    return reactor_thread()


@pytest.fixture
def origin_factory(live_reactor):
    """``origin_factory(host="127.0.0.1")`` starts a recording origin (tests/origin.py);
    all of them are stopped after the test."""
    from tests.origin import start_origin, stop_origin

    started = []

    def make(host: str = "127.0.0.1"):
        origin = start_origin(host)
        started.append(origin)
        return origin

    yield make
    for origin in started:
        stop_origin(origin)


@pytest.fixture
def origin(origin_factory):
    """A recording origin on 127.0.0.1:0."""
    return origin_factory()


# -- the hang guard ----------------------------------------------------------------------------

SLOW_TIMEOUT = 300


def pytest_collection_modifyitems(config, items):
    """pytest-timeout fails a hung test after ``timeout`` (pyproject: 60 s) with a traceback;
    tests marked ``slow`` (fresh venvs, large bodies) get ``SLOW_TIMEOUT`` instead, enough on
    a loaded 2-core machine."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
