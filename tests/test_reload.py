"""SIGHUP's reload: the config file and environment read again, plugins told."""

from mediaproxy import hookimpl
from mediaproxy.tap import reload_config
from mediaproxy.testing import ImageOrigin, call_in_reactor, make_image, start_proxy


class Recorder:
    def __init__(self):
        self.seen = []

    @hookimpl
    def mediaproxy_config_reloaded(self, runtime, old, new):
        self.seen.append((old.processing.default_quality, new.processing.default_quality))


def test_reload_tells_plugins_and_applies_the_new_config(live_reactor, tmp_path):
    path = tmp_path / "mediaproxy.toml"
    path.write_text("[processing]\ndefault_quality = 80\n")
    recorder = Recorder()
    origin = ImageOrigin({"/media/a.jpg": (200, make_image((200, 100)), "image/jpeg", [])})
    running = start_proxy(origin=origin, plugins=[recorder])
    try:
        path.write_text("[processing]\ndefault_quality = 42\n[cache]\nx_cache_header = false\n")
        call_in_reactor(reload_config, running.runtime, str(path))
        assert recorder.seen == [(80, 42)]
        assert running.runtime.params["q"].default == 42     # parameters rebuilt from it
        assert "x-cache" not in running.get("/media/a.jpg?w=50")[1]
        # a bad file is refused and the running config kept
        path.write_text("[processing]\ndefault_quality = 500\n")
        call_in_reactor(reload_config, running.runtime, str(path))
        assert running.runtime.config.processing.default_quality == 42
        assert recorder.seen == [(80, 42)]
    finally:
        running.stop()
