"""Where a configuration value came from: file and line, or the environment variable, in every
error; "did you mean" for unknown keys and variables; values shown as TOML writes them."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaproxy.config import (
    ConfigError, environment_warnings, iter_settings, load_config, setting_names,
)
from mediaproxy.configload import env_name, env_tree, show
from mediaproxy.tomlpos import key_lines, path_of


def load(tmp_path, text: str, environ=None):
    path = tmp_path / "m.toml"
    path.write_text(text)
    try:
        load_config(path, environ=environ or {}, load_entrypoints=False)
    except ConfigError as e:
        return str(e).replace(str(path), "m.toml")
    return None


# -- file and line ----------------------------------------------------------------------------

def test_a_bad_value_in_the_file_names_the_file_and_line(tmp_path):
    assert load(tmp_path, '# memory\n[cache.memory]\n\nmax_bytes = "abc"\n') == (
        'm.toml:4: cache.memory.max_bytes: must be an integer, got "abc"')


def test_a_dotted_key_and_an_inline_table_are_found(tmp_path):
    assert load(tmp_path, '[cache]\nmemory.max_bytes = true\n') == (
        "m.toml:2: cache.memory.max_bytes: must be an integer, got true")
    assert load(tmp_path, 'backend = { url = "http://h", connect_timeout = "x" }\n') == (
        'm.toml:1: backend.connect_timeout: must be a number, got "x"')
    assert load(tmp_path, 'cors.allow_origins = [1, 2]\n') == (
        "m.toml:1: cors.allow_origins: must be a list of strings, got [1, 2]")


def test_a_bad_table_of_an_array_of_tables_names_its_own_line(tmp_path):
    text = ('[[alerts.rules]]\nname = "a"\nexpr = "image.p99 > 1"\n\n'
            '[[alerts.rules]]\nname = "b"\nexpr = "image.p98 > 1"\n')
    message = load(tmp_path, text)
    assert message.startswith('m.toml:7: alerts.rules[1].expr: "image.p98 > 1" names the '
                              'unknown figure "image.p98"')


def test_a_key_the_environment_overrides_is_blamed_on_the_variable(tmp_path):
    assert load(tmp_path, "[cors]\nmax_age = 60\n", {"MEDIAPROXY_CORS__MAX_AGE": "soon"}) == (
        'MEDIAPROXY_CORS__MAX_AGE: cors.max_age: must be an integer, got "soon"')
    # the file's value stays the file's when another key comes from the environment
    other = {"MEDIAPROXY_CORS__RESOURCE_POLICY": "same-site"}
    assert load(tmp_path, "[cors]\nmax_age = -1\n", other) == (
        "m.toml:2: cors.max_age: -1 is below the minimum 0")


def test_a_value_set_by_the_program_names_no_source(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, overrides={"cors": {"max_age": "x"}}, load_entrypoints=False)
    assert (str(raised.value), raised.value.where) == (
        'cors.max_age: must be an integer, got "x"', None)


def test_a_secret_is_never_shown_wherever_it_came_from(tmp_path):
    assert load(tmp_path, '[signing]\nkeys = ["short"]\n') == (
        "m.toml:2: signing.keys: invalid value (not shown: it is a secret)")


# -- did you mean -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("[cache.memory]\nmax_byte = 1\n",
     "m.toml:2: cache.memory.max_byte: unknown key (did you mean cache.memory.max_bytes?)"),
    ("[cache.memroy]\nmax_bytes = 1\n",
     "m.toml:1: cache.memroy: unknown key (did you mean cache.memory?)"),
    ("[bakend]\nurl = 'http://h'\n", "m.toml:1: bakend: unknown key (did you mean backend?)"),
    ("[zzz]\nx = 1\n", "m.toml:1: zzz: unknown key (see docs/configuration.md)"),
])
def test_an_unknown_key_in_the_file_suggests_the_known_one(tmp_path, text, message):
    assert load(tmp_path, text) == message


@pytest.mark.parametrize("variable, message", [
    ("MEDIAPROXY_CACHE__MEMORY__MAXBYTES", "MEDIAPROXY_CACHE__MEMORY__MAXBYTES: "
     "cache.memory.maxbytes: unknown key (did you mean MEDIAPROXY_CACHE__MEMORY__MAX_BYTES?)"),
    ("MEDIAPROXY_CACHE__MEMRY__MAX_BYTES", "MEDIAPROXY_CACHE__MEMRY__MAX_BYTES: cache.memry: "
     "unknown key (did you mean MEDIAPROXY_CACHE__MEMORY__MAX_BYTES?)"),
    ("MEDIAPROXY_ZZZ__X", "MEDIAPROXY_ZZZ__X: zzz: unknown key (see docs/configuration.md)"),
])
def test_an_unknown_key_in_the_environment_suggests_the_variable(variable, message):
    with pytest.raises(ConfigError) as raised:
        load_config(environ={variable: "1"}, load_entrypoints=False)
    assert str(raised.value) == message


def test_unknown_variables_are_warned_about_one_line_each():
    config = load_config(environ={}, load_entrypoints=False)
    assert environment_warnings(config, {
        "MEDIAPROXY_BACKEND_URL": "x", "MEDIAPROXY_CONFIG": "m.toml", "MEDIAPROXY_BAKEND": "1",
        "MEDIAPROXY_CORS__MAX_AGE": "1", "OTHER": "x", "MEDIAPROXY_CACHE_MEMORY_MAXBYTES": "1",
    }) == [
        "MEDIAPROXY_BACKEND_URL: not a setting nor a variable mediaproxy reads, ignored (did "
        "you mean MEDIAPROXY_BACKEND__URL?)",
        "MEDIAPROXY_BAKEND: not a setting nor a variable mediaproxy reads, ignored",
        "MEDIAPROXY_CACHE_MEMORY_MAXBYTES: not a setting nor a variable mediaproxy reads, "
        "ignored (did you mean MEDIAPROXY_CACHE__MEMORY__MAX_BYTES?)"]


#: Every setting with a variable of its own (a preset's values are MEDIAPROXY_PRESETS__NAME__W)
SETTINGS = [key for key, f in iter_settings() if f.metadata["kind"] not in ("section", "presets")]


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(SETTINGS))
def test_every_setting_maps_to_its_variable_and_back(key):
    # the oracle: upper case, dots to double underscores, the prefix in front
    variable = "MEDIAPROXY_" + "__".join(part.upper() for part in key.split("."))
    assert env_name(key) == variable
    tree, spots = env_tree({variable: "v"})
    node = tree
    for part in key.split(".")[:-1]:
        node = node[part]
    assert node == {key.split(".")[-1]: "v"}
    assert spots == {tuple(key.split(".")): variable}
    # written with single underscores, it is warned about and the right one suggested
    squashed = "MEDIAPROXY_" + key.upper().replace(".", "_")
    config = load_config(environ={}, load_entrypoints=False)
    assert environment_warnings(config, {squashed: "v"}) == (
        [] if squashed == variable else
        [f"{squashed}: not a setting nor a variable mediaproxy reads, ignored (did you mean "
         f"{variable}?)"])


def test_no_two_settings_squash_to_the_same_variable():
    names = setting_names(load_config(environ={}))
    squashed = [name.upper().replace(".", "_") for name in names]
    assert len(set(squashed)) == len(squashed)


# -- values as TOML writes them ---------------------------------------------------------------

@pytest.mark.parametrize("value, shown", [
    ("abc", '"abc"'), ('a"b\\', '"a\\"b\\\\"'), ("\n", '"\\u000a"'), (True, "true"),
    (False, "false"), (3, "3"), (1.5, "1.5"), ([1, "x"], '[1, "x"]'), ((), "[]"),
    ({"a": 1}, "{ a = 1 }"), ({}, "{}"), (float("inf"), "inf"), (float("-inf"), "-inf"),
    (float("nan"), "nan"),
])
def test_values_are_shown_as_toml(value, shown):
    assert show(value) == shown


@given(st.recursive(st.none().map(lambda _: 0) | st.booleans() | st.integers()
                    | st.text(max_size=8) | st.floats(allow_nan=False, allow_infinity=False),
                    lambda inner: st.lists(inner, max_size=3), max_leaves=6))
def test_a_shown_value_reads_back_as_the_value(value):
    assert tomllib.loads(f"v = {show(value)}")["v"] == value


# -- the line finder --------------------------------------------------------------------------

NAME_STYLES = st.sampled_from(["bare", "basic", "literal", "escaped", "escaped8"])


def spell(name: str, style: str) -> str:
    """``name`` as a key, bare or quoted (its first letter escaped, \\uXXXX or \\UXXXXXXXX)."""
    return {"bare": name, "basic": f'"{name}"', "literal": f"'{name}'",
            "escaped": f'"\\u{ord(name[0]):04x}{name[1:]}"',
            "escaped8": f'"\\U{ord(name[0]):08x}{name[1:]}"'}[style]


ONE_LINE = ['1', '-2.5', 'true', '"a = 1"', "'[x]'", '"q\\"uote # no"', '1979-05-27T07:32:00Z',
            '"""x\\"""y"""', '"""ends in quotes"""""', "'''q''''", '"""x\\""""',
            '"""a\\"""b"" c"""']
SCALARS = st.sampled_from(ONE_LINE + ['"""\nk = 1\n[fake]\n"""', "'''\n[[fake]]\n'''"])


@st.composite
def documents(draw):
    """(TOML text, {path: line}) built line by line, so each key's line is known."""
    lines: list[str] = []
    expected: dict[tuple, int] = {}

    def noise():
        for _ in range(draw(st.integers(0, 2))):
            lines.append(draw(st.sampled_from(["", "# a comment", "   ", "# k = 1"])))

    def value(path):
        kind = draw(st.sampled_from(["scalar", "inline", "array", "strings",
                                     "multiline_array"]))
        if kind == "scalar":
            return draw(SCALARS)
        if kind == "inline":
            keys = draw(st.lists(st.sampled_from("xyz"), unique=True, max_size=3))
            for k in keys:
                expected[path + (k,)] = len(lines) + 1
            pairs = [f"{k} = {draw(st.sampled_from(ONE_LINE))}" for k in keys]
            return "{ " + ", ".join(pairs) + " }" if keys else "{}"
        count = draw(st.integers(0, 3))
        if kind in ("array", "strings"):
            for i in range(count):
                expected[path + (i,)] = len(lines) + 1
            item = "1" if kind == "array" else '"b\\"],"'
            return "[" + ",".join(item for _ in range(count)) + "]"
        text = "["
        for i in range(count):   # each element on a line of its own, after the opening one
            expected[path + (i,)] = len(lines) + 2 + i
            text += f"\n  {{ e = {i} }},"
            expected[path + (i, "e")] = len(lines) + 2 + i
        return text + "\n]"

    def entries(table: tuple):
        for j in range(draw(st.integers(0, 3))):
            noise()
            line = len(lines) + 1
            if draw(st.booleans()):
                name = f"d{j}"
                spelled = f"{spell(name, draw(NAME_STYLES))} . {spell('k', draw(NAME_STYLES))}"
                expected[table + (name,)] = line
                path = table + (name, "k")
            else:
                name = f"k{j}"
                spelled = spell(name, draw(NAME_STYLES))
                path = table + (name,)
            expected[path] = line
            text = value(path)
            equals = draw(st.sampled_from([" = ", "=", "\t=  "]))
            lines.extend(f"{draw(st.sampled_from(['', '  ']))}{spelled}{equals}{text}"
                         .split("\n"))

    entries(())
    for i in range(draw(st.integers(0, 3))):
        noise()
        if draw(st.booleans()):
            table = (f"t{i}",)
            expected[table] = len(lines) + 1
            lines.append(f"[ {spell(table[0], draw(NAME_STYLES))} ]  # header")
            entries(table)
        else:
            for n in range(draw(st.integers(1, 3))):
                noise()
                if n == 0:
                    expected[(f"a{i}",)] = len(lines) + 1
                expected[(f"a{i}", n)] = len(lines) + 1
                lines.append(f"[[{spell(f'a{i}', draw(NAME_STYLES))}]]")
                entries((f"a{i}", n))
    return "\n".join(lines) + "\n", expected


@settings(max_examples=300, deadline=None)
@given(documents())
def test_the_line_finder_finds_every_key_where_it_was_written(document):
    text, expected = document
    tomllib.loads(text)   # the generator writes valid TOML
    assert key_lines(text) == expected


@pytest.mark.parametrize("key, path", [
    ("backend.url", ("backend", "url")), ("alerts.rules[1].expr", ("alerts", "rules", 1, "expr")),
    ("a[0][2]", ("a", 0, 2)), ("presets.thumb-2.w", ("presets", "thumb-2", "w")),
])
def test_a_key_reads_as_a_path(key, path):
    assert path_of(key) == path


@pytest.mark.parametrize("text, found", [
    ("a = [ } ]\nb = 1\n", {("a",): 1, ("a", 0): 1}),   # stuck: no endless loop
    ("a = 1\n[", {("a",): 1}),                          # cut short
    ('a = 1\nb = "\\uZZZZ"\n', {("a",): 1, ("b",): 2}),   # a bad escape
])
def test_what_the_line_finder_cannot_read_leaves_it_with_what_it_found(text, found):
    # never on a file tomllib accepted; should it happen, an error just names fewer lines
    assert key_lines(text) == found


@pytest.mark.parametrize("text, found", [
    ('"a\\"b" = 1\n"c\\\\" = 2\n', {('a"b',): 1, ("c\\",): 2}),       # escapes in key names
    ('x = [[1], [2]]\ny = ""\nz = \'\'\n', {("x",): 1, ("x", 0): 1, ("x", 0, 0): 1,
                                           ("x", 1): 1, ("x", 1, 0): 1, ("y",): 2, ("z",): 3}),
    ('t = {a = {b = [{c = 1}]}}\n', {("t",): 1, ("t", "a"): 1, ("t", "a", "b"): 1,
                                     ("t", "a", "b", 0): 1, ("t", "a", "b", 0, "c"): 1}),
])
def test_nested_values_and_escaped_names_are_found(text, found):
    tomllib.loads(text)
    assert key_lines(text) == found
