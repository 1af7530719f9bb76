"""``mediaproxy warm`` and ``mediaproxy purge`` as a user runs them: real processes."""

import json
import subprocess
import sys

from mediaproxy.testing import ImageOrigin, make_image, start_origin, wait_for

from .processes import ROOT, ProxyProcess


def run_cli(*args, env=None, timeout=60):
    import os
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIAPROXY_")}
    environ.update(env or {})
    environ["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "mediaproxy", *args], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def test_warm_then_purge_through_shared_layers(live_reactor, redis_server, tmp_path):
    origin = ImageOrigin({"/media/uploads/a.jpg": (200, make_image((300, 200)), "image/jpeg",
                                                   []),
                          "/media/shop/uploads/b.jpg": (200, make_image((300, 200)),
                                                        "image/jpeg", [])})
    port = start_origin(origin).getHost().port
    env = {"MEDIAPROXY_CACHE__REDIS__URL": redis_server.url,
           "MEDIAPROXY_CACHE__FILE__DIR": str(tmp_path / "cache")}
    # one process: the test reads its memory layer (HIT-MEMORY) after the warm-up
    proxy = ProxyProcess(port, {**env, "MEDIAPROXY_SERVER__WORKERS": "1"})
    try:
        wait_for(lambda: proxy.get("/media/uploads/a.jpg?w=5")[0] == 200, 20, what="proxy up")
        urls = tmp_path / "urls.txt"
        urls.write_text("# warm these\n/media/uploads/a.jpg?w=100\n"
                        f"http://127.0.0.1:{proxy.port}/media/shop/uploads/b.jpg?w=120\n\n"
                        "/media/uploads/missing.jpg?w=10\n")
        warmed = run_cli("warm", str(urls), "--proxy", f"http://127.0.0.1:{proxy.port}")
        assert warmed.returncode == 1        # the missing one failed, and is reported
        lines = warmed.stdout.splitlines()
        assert lines[0].startswith("200 MISS") and lines[1].startswith("200 MISS")
        assert lines[2].startswith("404")
        assert proxy.get("/media/uploads/a.jpg?w=100")[1]["x-cache"] == "HIT-MEMORY"

        # purge one tenant with the proxy running: shared layers directly, memory via Redis
        purged = run_cli("purge", "--tenant", "shop", env=env)
        assert purged.returncode == 0, purged.stderr
        counts = json.loads(purged.stdout)["purged"]
        # the result and the note of what its format resolved to (docs/cache.md); the file
        # layer holds the original too
        assert counts["redis"] == 2 and counts["file"] == 3
        wait_for(lambda: proxy.get("/media/shop/uploads/b.jpg?w=120")[1]["x-cache"] == "MISS",
                 10, what="the running proxy forgot the tenant")
        assert proxy.get("/media/uploads/a.jpg?w=100")[1]["x-cache"] == "HIT-MEMORY"

        assert run_cli("purge", "--tenant", "Not-A-Tenant", env=env).returncode == 2
    finally:
        proxy.stop()
