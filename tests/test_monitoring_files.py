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


def _series(name: str, labels: dict, values: str) -> dict:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def test_each_shipped_rule_fires_on_the_series_that_mean_it_and_not_otherwise(tmp_path):
    # promtool's rule unit tests, on series written by hand: instance "bad" has the trouble,
    # "good" has none, "quiet" has it with fewer than 20 requests a minute (not judged). The
    # annotations are left out (they are text for people); the expressions are what is checked.
    text = RULES.read_text()
    stripped = tmp_path / "rules.yml"
    stripped.write_text(re.sub(r"\n        annotations:\n(?:          .*\n)+", "\n", text + "\n"))
    h = "mediaproxy_http_request_duration_seconds_bucket"
    r = "mediaproxy_http_requests_total"
    s = 15   # seconds between samples: "0+10x60" is 40 per minute for 15 minutes
    series = []
    for inst, slow, fives, twos in (("bad", 10, 2, 8), ("good", 0, 0, 10), ("quiet", 1, 1, 1)):
        for kind in ("image", "passthrough"):
            series += [_series(h, {"instance": inst, "kind": kind, "le": "1"},
                               f"0+{10 - slow if inst != 'quiet' else 1}x60"),
                       _series(h, {"instance": inst, "kind": kind, "le": "5"},
                               f"0+{10 if inst != 'quiet' else 2}x60"),
                       _series(h, {"instance": inst, "kind": kind, "le": "+Inf"},
                               f"0+{10 if inst != 'quiet' else 2}x60"),
                       _series(r, {"instance": inst, "kind": kind, "status": "5xx"},
                               f"0+{fives}x60"),
                       _series(r, {"instance": inst, "kind": kind, "status": "2xx"},
                               f"0+{twos}x60"),
                       _series(r, {"instance": inst, "kind": kind, "status": "aborted"},
                               "0+50x60")]   # aborted requests are never judged
        bad = inst == "bad"
        miss, hit, stale = {"bad": (8, 1, 1), "good": (1, 8, 1), "quiet": (1, 0, 0)}[inst]
        series += [
            _series("mediaproxy_cache_lookups_total", {"instance": inst, "result": "miss"},
                    f"0+{miss}x60"),
            _series("mediaproxy_cache_lookups_total", {"instance": inst, "result": "hit"},
                    f"0+{hit}x60"),
            _series("mediaproxy_cache_lookups_total", {"instance": inst, "result": "stale"},
                    f"0+{stale}x60"),
            _series("mediaproxy_reactor_lag_seconds", {"instance": inst},
                    "0.9x60" if bad else "0.01x60"),
            _series("mediaproxy_breaker_state", {"instance": inst, "breaker": "images"},
                    "2x60" if bad else "1x60"),
            _series("mediaproxy_breaker_state", {"instance": inst, "breaker": "passthrough"},
                    "2x60" if bad else "0x60"),
            _series("mediaproxy_alert_firing",
                    {"instance": inst, "alert": "cache_disk_low", "severity": "warning"},
                    "1x60" if bad else "0x60"),
            _series("mediaproxy_admission_shed_total", {"instance": inst, "reason": "timeout"},
                    f"0+{30 if bad else 3}x60")]
    from mediaproxy.config import DEFAULT_ALERT_RULES

    checks = [{"eval_time": "14m", "alertname": rule.name,
               "exp_alerts": [{"exp_labels": {"instance": "bad", "severity": rule.severity}}]}
              for rule in DEFAULT_ALERT_RULES]
    spec = tmp_path / "rules_test.yml"
    spec.write_text(json.dumps({"rule_files": [str(stripped)], "evaluation_interval": "15s",
                                "tests": [{"interval": f"{s}s", "input_series": series,
                                           "alert_rule_test": checks}]}))
    done = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
