"""The shipped Prometheus rules file and Grafana dashboard: promtool accepts them, and every
metric they name is exported by a real scrape of a real proxy."""

import json
import re
import subprocess
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mediaproxy.testing import ImageOrigin, make_image, start_proxy, wait_for

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "conf" / "prometheus" / "mediaproxy-rules.yml"
DASHBOARD = ROOT / "conf" / "grafana" / "mediaproxy-dashboard.json"
PROMTOOL = "promtool"   # Debian's prometheus package; .ci/run and ./dev test install it
NAME = re.compile(r"\b((?:mediaproxy|process)_\w+)")


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", ())]


def referenced() -> set[str]:
    """Metric names in the rules' and the dashboard's PromQL, without _bucket/_sum/_count."""
    # the whole rules file: its expressions are all it names metrics in
    texts = [RULES.read_text()] + dashboard_exprs()
    return {re.sub(r"_(bucket|sum|count)$", "", name)
            for text in texts for name in NAME.findall(text)}


def test_promtool_accepts_the_rules_file():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout


def test_the_rules_file_matches_the_default_in_process_rules():
    from mediaproxy.config import DEFAULT_ALERT_RULES

    text = RULES.read_text()
    alerts = re.findall(r"^      - alert: (\w+)$", text, re.M)
    severities = re.findall(r"^          severity: (\w+)$", text, re.M)
    remedies = re.findall(r'^          remedy: "(.*)"$', text, re.M)
    assert list(zip(alerts, severities, remedies)) == [
        (r.name, r.severity, r.remedy) for r in DEFAULT_ALERT_RULES]


def test_every_dashboard_query_is_valid_promql(tmp_path):
    # promtool parses PromQL in rule files: each panel query becomes a recording rule, with
    # Grafana's variables given values
    exprs = [e.replace("$__rate_interval", "5m").replace("$__range", "1h")
             .replace("$instance", ".*") for e in dashboard_exprs()]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    done = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(exprs) >= 30


def scrape(proxy) -> str:
    svc = next(s for s in proxy.services if getattr(s, "what", "").startswith("monitoring"))
    wait_for(lambda: svc.port is not None, 10, what="monitoring listening")
    url = f"http://127.0.0.1:{svc.port.getHost().port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        names.update(re.sub(r"_(bucket|sum|count|total|created)$", "", s.name)
                     for s in family.samples)
        names.update(s.name for s in family.samples)
    return names


def test_every_metric_the_rules_and_dashboard_name_is_exported(live_reactor, tmp_path):
    files = {"/media/a.jpg": (200, make_image((64, 48)), "image/jpeg", []),
             "/page/": (200, b"hello", "text/plain", [])}
    with start_proxy(origin=ImageOrigin(files), overrides={
            "monitoring": {"listen": "tcp:0:interface=127.0.0.1"},
            "cache": {"file": {"dir": str(tmp_path / "cache")}}}) as proxy:
        assert proxy.get("/media/a.jpg?w=32").status == 200
        assert proxy.get("/media/a.jpg?w=32").status == 200
        assert proxy.get("/page/").status == 200
        names = exported(scrape(proxy))
    missing = sorted(referenced() - names)
    assert missing == []
    assert {"mediaproxy_alert_firing", "mediaproxy_http_request_duration_seconds",
            "process_resident_memory_bytes"} <= referenced()
