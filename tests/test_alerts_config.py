"""The [alerts] section and its [[alerts.rules]] array of tables: parsed, checked, errors that
name the rule's key and where the list is set."""

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mediaproxy.config import (
    ALERT_FIGURES, OPERATORS, AlertRule, Config, ConfigError, DEFAULT_ALERT_RULES, load_config,
    parse_condition, to_toml,
)


def test_the_default_rules_are_valid_and_named_once():
    assert Config().alerts.rules == DEFAULT_ALERT_RULES
    assert len({rule.name for rule in DEFAULT_ALERT_RULES}) == len(DEFAULT_ALERT_RULES) == 9
    for rule in DEFAULT_ALERT_RULES:
        parse_condition(rule.expr)
        assert rule.remedy and rule.severity in ("warning", "critical")


def test_rules_from_a_file_use_the_for_key(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[alerts]\ninterval = 2\n\n[[alerts.rules]]\nname = "slow"\n'
                    'expr = "image.p95>=1.5"\nfor = 30\nseverity = "critical"\n'
                    'remedy = "add threads"\n\n[[alerts.rules]]\nname = "lag"\n'
                    'expr = "reactor.lag > 0.2"\n')
    config = load_config(path, environ={})
    assert config.alerts.interval == 2.0
    assert config.alerts.rules == (AlertRule("slow", "image.p95>=1.5", 30.0, "critical",
                                             "add threads"),
                                   AlertRule("lag", "reactor.lag > 0.2", 0.0, "warning", ""))
    assert "for = 30.0" in to_toml(config)


def test_rules_from_the_environment_replace_the_defaults():
    config = load_config(environ={"MEDIAPROXY_ALERTS__RULES":
                                  '[{name = "hits", expr = "cache.hit_ratio < 0.25", for = 5}]'})
    assert config.alerts.rules == (AlertRule("hits", "cache.hit_ratio < 0.25", 5.0),)
    assert load_config(environ={"MEDIAPROXY_ALERTS__RULES": "[]"}).alerts.rules == ()


@pytest.mark.parametrize("rules, key, fragment", [
    ('[{name = "a", expr = "image.p98 > 1"}]', "alerts.rules[0].expr",
     'unknown figure "image.p98"'),
    ('[{name = "a", expr = "image.p99 > 1"}, {name = "b", expr = "image.p99 >> 1"}]',
     "alerts.rules[1].expr", "is not FIGURE OP NUMBER"),
    ('[{name = "a", expr = "__import__(\'os\') > 1"}]', "alerts.rules[0].expr",
     "is not FIGURE OP NUMBER"),
    ('[{name = "a", expr = "image.p99 > 1 or 1"}]', "alerts.rules[0].expr",
     "is not FIGURE OP NUMBER"),
    ('[{name = "a"}]', "alerts.rules[0].expr", "is required"),
    ('[{name = "A b", expr = "image.p99 > 1"}]', "alerts.rules[0].name", "not a rule name"),
    ('[{name = "a", expr = "image.p99 > 1", severity = "page"}]', "alerts.rules[0].severity",
     '"page"'),
    ('[{name = "a", expr = "image.p99 > 1", for = -1}]', "alerts.rules[0].for", "minimum"),
    ('[{name = "a", expr = "image.p99 > 1", when = 1}]', "alerts.rules[0].when",
     "unknown key"),
    ('[{name = "a", expr = "image.p99 > 1"}, {name = "a", expr = "image.p50 > 1"}]',
     "alerts.rules", "a repeated"),
    ('["image.p99 > 1"]', "alerts.rules", "array of tables"),
])
def test_a_bad_rule_is_a_config_error_naming_its_key_and_the_variable(rules, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(environ={"MEDIAPROXY_ALERTS__RULES": rules})
    assert info.value.key == key
    assert fragment in str(info.value)
    assert "MEDIAPROXY_ALERTS__RULES" in str(info.value)


@given(st.sampled_from(sorted(ALERT_FIGURES)), st.sampled_from(OPERATORS),
       st.floats(-1e9, 1e9, allow_nan=False), st.sampled_from(["", " ", "  "]))
def test_any_figure_op_number_parses_back_to_its_parts(figure, op, number, space):
    assert parse_condition(f"{space}{figure}{space}{op}{space}{number!r}{space}") == (
        figure, op, number)


def test_the_shipped_file_holds_the_default_rules():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "conf" / "mediaproxy.toml").read_text()
    assert len(tomllib.loads(text)["alerts"]["rules"]) == len(DEFAULT_ALERT_RULES)
