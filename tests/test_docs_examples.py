"""
Every configuration example in the documentation loads.

A reader copies a ```toml block from a page into /etc/mediaproxy/mediaproxy.toml and expects it
to start; so each one goes through the real loader (:func:`mediaproxy.config.load_config`,
what ``--config FILE`` uses after TOML parsing): a fragment is merged with the defaults as a
partial file is, and a wrong key or value fails here with the page and line of the block. The
pages are found, not listed (README.md, docs/*.md, every plugin's README.md), so a page another
change adds is checked the moment it exists.

Which fences are what, by their info string (the word after the backticks):

* ``toml``: a mediaproxy configuration, loaded and validated. A TOML block that is another
  file says so after the language (```toml pyproject.toml```), or is recognisably a
  ``pyproject.toml`` (only ``[project]``, ``[build-system]``, ``[tool.*]`` tables): those are
  parsed as TOML only.
* ``nginx``: given to ``nginx -t`` when nginx is installed (CI need not have it; then only the
  braces are checked). A block with ``server``/``upstream``/``map`` at its top level is an
  ``http {}`` body, anything else a ``server {}`` body; absolute paths under /var and /run move
  into a temporary directory and certificates are made there, so the check needs no root.
* ``systemd``, or ``ini`` with a systemd section (``[Service]``...): a unit file or drop-in:
  sections and ``Key=Value`` lines. Other INI files (setup.cfg) are not checked.

And in the whole page: every ``MEDIAPROXY_SECTION__KEY`` environment variable it names must be
a setting; every ``MEDIAPROXY_A__B=value`` of a shell command or a unit's ``Environment=`` line
must load through the environment; every metric it names (a ``mediaproxy_`` name ending in
``_total``, ``_seconds`` or ``_bytes``, or followed by a label selector) must be a series of
docs/operations.md's table, which tests/test_metrics_reference.py checks against a real scrape.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest

from mediaproxy.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent
OPERATIONS = ROOT / "docs" / "operations.md"
PYPROJECT_TABLES = {"project", "build-system", "tool", "dependency-groups"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
ENV_NAME = re.compile(r"\bMEDIAPROXY_([A-Z0-9_]+__[A-Z0-9_]+)\b")
#: What follows a variable in a quoted "unknown key" error: ``: cache.memry: unknown key``.
QUOTED_UNKNOWN = re.compile(r":\s+[a-z0-9_.]+:\s+unknown key")
#: A metric named in a page: a ``mediaproxy_`` name with a series' suffix, or a label selector.
METRIC = re.compile(r"\b(mediaproxy_[a-z0-9_]+?(?:_total|_seconds|_bytes)?)(_bucket|_sum|_count)?"
                    r"(?=\{|\b)")
#: An assignment in a shell command or a unit's Environment= line: MEDIAPROXY_A__B=value.
ENV_ASSIGNMENT = re.compile(r"\bMEDIAPROXY_([A-Z0-9_]+__[A-Z0-9_]+)="
                            r"('[^']*'|\"[^\"]*\"|[^\s;'\"]+)")
SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "ini", "systemd", "dockerfile"}
SERIES_ROW = re.compile(r"^\| `(mediaproxy_[a-z0-9_]+)` \|", re.M)


def pages() -> list[Path]:
    found = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("plugins/*/README.md")]
    return sorted(p for p in found if p.is_file())


@attrs.frozen
class Block:
    page: Path
    line: int           # 1-based line of the opening fence
    language: str
    info: tuple[str, ...]
    text: str

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (CommonMark fences, indented ones inside list
    items included; their indentation is taken off the content)."""
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = tuple(opening["info"].split())
        body, j = [], i + 1
        while j < len(lines):
            closing = FENCE.match(lines[j])
            if (closing and closing["fence"][0] == fence[0]
                    and len(closing["fence"]) >= len(fence) and not closing["info"].strip()):
                break
            line = lines[j]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            j += 1
        blocks.append(Block(page, i + 1, info[0].lower() if info else "", info[1:],
                            "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def check_toml(block: Block) -> str | None:
    """None when the block is a valid example, else why not."""
    try:
        data = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as e:
        return f"not valid TOML: {e}"
    other_file = [word for word in block.info if word.endswith(".toml")
                  and word != "mediaproxy.toml"]
    if other_file or (data and set(data) <= PYPROJECT_TABLES):
        return None     # another TOML file: its syntax is all there is to check here
    try:   # with the installed plugins, whose sections ([s3]) a page may show
        load_config(environ={}, overrides=data)
    except ConfigError as e:
        return f"the configuration loader refuses it: {e}"
    return None


def check_assignments(block: Block) -> list[str]:
    """Each ``MEDIAPROXY_...=value`` of a shell or unit block, loaded alone through the
    environment (a value naming a shell variable, ``$TOKEN``, is left out)."""
    out = []
    for match in ENV_ASSIGNMENT.finditer(block.text):
        name, value = f"MEDIAPROXY_{match.group(1)}", match.group(2)
        if value[:1] in "'\"":
            value = value[1:-1]
        if "$" in value or setting_for(match.group(1)):
            continue    # a shell variable; an unknown name is reported by the page's scan
        try:
            load_config(environ={name: value})
        except ConfigError as e:
            out.append(f"{name}={value}: {e.key}: {e.message}")
    return out


def setting_for(env_suffix: str) -> str | None:
    """None when ``MEDIAPROXY_<env_suffix>`` names a setting, else why not."""
    cls, path = Config, env_suffix.lower().split("__")
    plugins = installed_sections()
    if path[0] in plugins:
        cls = plugins[path[0]]
        path, prefix = path[1:], [path[0]]
    else:
        prefix = []
    for depth, part in enumerate(path):
        fields = {f.metadata.get("key") or f.name: f for f in attrs.fields(cls)}
        field = fields.get(part)
        if field is None:
            return f"no key {'.'.join(prefix + path[:depth + 1])!r}"
        if field.metadata.get("kind") != "section":
            # a setting; one that holds tables (alerts.rules) or a mapping may be named deeper
            return None
        cls = field.metadata["cls"]
    return f"{'.'.join(prefix + path)!r} is a section, not a setting"


@functools.cache
def installed_sections() -> dict[str, type]:
    """The sections the installed plugins declare (``[s3]``): settings like the core's."""
    return {name: type(settings)
            for name, settings in load_config(environ={}).plugin_sections.sections}


SYSTEMD_SECTIONS = {"[Unit]", "[Service]", "[Install]", "[Socket]", "[Timer]", "[Journal]",
                    "[Path]", "[Mount]"}


def is_unit(block: Block) -> bool:
    """An ``ini`` block is a systemd file when it has a systemd section (setup.cfg and other
    INI files are not checked)."""
    return any(line.strip() in SYSTEMD_SECTIONS for line in block.text.splitlines())


def check_unit(block: Block) -> str | None:
    section = None
    for number, line in enumerate(block.text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        if re.fullmatch(r"\[[A-Za-z][A-Za-z0-9 ._-]*\]", stripped):
            section = stripped
        elif section is None:
            return f"line {number} is outside any [Section]"
        elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*=.*", stripped):
            return f"line {number} is not Key=Value: {stripped!r}"
    return None if section else "no [Section]"


# -- nginx ------------------------------------------------------------------------------------

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


def braces_balance(text: str) -> bool:
    depth = 0
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        for char in code:
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth < 0:
                return False
    return depth == 0


def top_level_directives(text: str) -> list[str]:
    names, depth = [], 0
    for line in text.splitlines():
        code = line.split("#", 1)[0].strip()
        if depth == 0 and code:
            names.append(code.split()[0])
        depth += code.count("{") - code.count("}")
    return names


def nginx_conf(block: Block, tmp: Path) -> str:
    """A whole nginx.conf around the block, its absolute /var and /run paths moved into
    ``tmp`` and a throwaway certificate where it names one."""
    text = re.sub(r"(?<=[\s\"'])/(var|run)/", lambda m: f"{tmp}/{m.group(1)}/", block.text)
    for moved in re.findall(rf"{re.escape(str(tmp))}/[^\s;\"']+", text):
        Path(moved).parent.mkdir(parents=True, exist_ok=True)

    def certificate(match):
        cert, key = tmp / "certificate.pem", tmp / "certificate.key"
        if not cert.exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                 "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                check=True, capture_output=True, timeout=30)
        return f"{match.group(1)} {key if match.group(1).endswith('_key') else cert};"
    text = re.sub(r"\b(ssl_certificate(?:_key)?)\s+(\S+);", certificate, text)
    top = set(top_level_directives(text))
    if not top & {"server", "upstream", "map", "proxy_cache_path", "log_format"}:
        text = f"server {{\n    listen 127.0.0.1:8;\n{text}}}\n"
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / name).mkdir(exist_ok=True)
    temp_paths = "".join(f"{name}_temp_path {tmp}/{name};\n"
                         for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\nevents {{}}\n"
            f"http {{\n{temp_paths}access_log {tmp}/access.log;\n{text}}}\n")


def check_nginx(block: Block, tmp: Path) -> str | None:
    if not braces_balance(block.text):
        return "its braces do not balance"
    if NGINX is None:
        return None     # nginx is not installed here: the braces are what can be checked
    conf = tmp / "nginx.conf"
    conf.write_text(nginx_conf(block, tmp))
    result = subprocess.run([NGINX, "-t", "-q", "-p", str(tmp), "-e", str(tmp / "error.log"),
                             "-c", str(conf)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return f"nginx -t refuses it: {result.stderr.strip()}"
    return None


# -- the tests --------------------------------------------------------------------------------

def problems(page: Path, tmp: Path) -> list[str]:
    found = []
    for n, block in enumerate(fenced_blocks(page)):
        if block.language == "toml":
            why = check_toml(block)
        elif block.language == "systemd" or (block.language == "ini" and is_unit(block)):
            why = check_unit(block)
        elif block.language == "nginx":
            work = tmp / f"nginx-{n}"
            work.mkdir()
            why = check_nginx(block, work)
        else:
            why = None
        if why:
            found.append(f"{block.where()}: ```{block.language} block: {why}")
        if block.language in SHELL_LANGUAGES:
            found += [f"{block.where()}: ```{block.language} block: {why}"
                      for why in check_assignments(block)]
    text = page.read_text(encoding="utf-8")
    series = set(SERIES_ROW.findall(OPERATIONS.read_text(encoding="utf-8")))
    for match in METRIC.finditer(text):
        name, suffix = match.groups()
        looks_like_series = (suffix or name.endswith(("_total", "_seconds", "_bytes"))
                             or text.startswith("{", match.end()))
        if looks_like_series and name not in series:
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{page.relative_to(ROOT)}:{line}: {match.group(0)}: no such series in "
                         "docs/operations.md (Every series)")
    for match in ENV_NAME.finditer(text):
        if QUOTED_UNKNOWN.match(text, match.end()):
            continue   # the loader's own message about a misspelt variable, quoted
        why = setting_for(match.group(1))
        if why:
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{page.relative_to(ROOT)}:{line}: MEDIAPROXY_{match.group(1)}: {why}")
    return found


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_of_the_page_is_valid(page, tmp_path):
    assert problems(page, tmp_path) == []


def test_the_pages_checked_include_every_doc_and_readme():
    names = {str(p.relative_to(ROOT)) for p in pages()}
    assert {"README.md", "docs/configuration.md", "docs/deployment.md",
            "docs/migration-grooveshop.md", "docs/troubleshooting.md",
            "plugins/mediaproxy-example/README.md"} <= names


def test_the_blocks_that_are_checked_exist():
    """The check is not vacuous: the guides hold config examples of each kind."""
    counts: dict[str, int] = {}
    for page in pages():
        for block in fenced_blocks(page):
            counts[block.language] = counts.get(block.language, 0) + 1
    assert counts.get("toml", 0) >= 10 and counts.get("nginx", 0) >= 2
    assert counts.get("ini", 0) >= 1


# -- the checker itself: a bad example is reported with its page and line ---------------------

def write_page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def test_a_bad_key_is_reported_with_the_page_and_the_line_of_its_block(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = write_page(tmp_path, "# t\n\n```toml\n[cache]\nttl = 3\n```\n\n1. a list item\n\n"
                                "   ```toml\n   [server]\n   workers = 0\n   ```\n")
    assert problems(page, tmp_path) == [
        "page.md:3: ```toml block: the configuration loader refuses it: cache.ttl: unknown key "
        "(see docs/configuration.md)",
        "page.md:10: ```toml block: the configuration loader refuses it: server.workers: 0 is "
        "below the minimum 1 (\"auto\": one per CPU core)"]


def test_a_fragment_loads_over_the_defaults_and_other_toml_files_are_only_parsed(tmp_path):
    fragment = Block(tmp_path, 1, "toml", (), '[cache.redis]\nurl = "redis://10.0.0.1:6379/0"\n')
    assert check_toml(fragment) is None
    assert config_from_dict(tomllib.loads(fragment.text)).cache.memory.max_bytes == 128 * 2**20
    pyproject = Block(tmp_path, 1, "toml", (), '[project.entry-points.mediaproxy]\nx = "y"\n')
    named = Block(tmp_path, 1, "toml", ("other.toml",), '[anything]\nx = 1\n')
    assert check_toml(pyproject) is None and check_toml(named) is None
    assert check_toml(Block(tmp_path, 1, "toml", (), "[anything]\nx = 1\n")) == (
        "the configuration loader refuses it: anything: unknown key (see docs/configuration.md)")
    assert check_toml(Block(tmp_path, 1, "toml", (), "x = \n")).startswith("not valid TOML: ")


def test_environment_assignments_in_commands_are_loaded(tmp_path):
    block = Block(tmp_path, 1, "sh", (), "MEDIAPROXY_CACHE__MEMORY__MAX_BYTES=64MiB \\\n"
                  "MEDIAPROXY_SERVER__WORKERS='0' MEDIAPROXY_ADMIN__TOKEN=$TOKEN twistd\n"
                  "Environment=MEDIAPROXY_CORS__MAX_AGE=soon\n")
    assert check_assignments(block) == [
        "MEDIAPROXY_SERVER__WORKERS=0: server.workers: 0 is below the minimum 1 (\"auto\": one "
        "per CPU core)",
        'MEDIAPROXY_CORS__MAX_AGE=soon: cors.max_age: must be an integer, got "soon"']


def test_environment_names_must_name_a_setting():
    assert setting_for("CACHE__REDIS__URL") is None
    assert setting_for("ALERTS__RULES") is None
    assert setting_for("CACHE__REDIS__URI") == "no key 'cache.redis.uri'"
    assert setting_for("NOPE__X") == "no key 'nope'"
    assert setting_for("CACHE__REDIS") == "'cache.redis' is a section, not a setting"


def test_metric_names_must_be_series(tmp_path, monkeypatch):
    page = write_page(tmp_path, "`mediaproxy_cache_lookups_total{result=\"hit\"}`, "
                                "`mediaproxy_http_request_duration_seconds_bucket`,\n"
                                "`mediaproxy_cache_hit_total`, `mediaproxy_breaker_sate{x}`, "
                                "`mediaproxy_configure` (a hook)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert problems(page, tmp_path) == [
        "page.md:2: mediaproxy_cache_hit_total: no such series in docs/operations.md (Every "
        "series)",
        "page.md:2: mediaproxy_breaker_sate: no such series in docs/operations.md (Every series)"]


def test_the_shipped_unit_file_is_a_unit():
    unit = (ROOT / "conf" / "mediaproxy.service").read_text()
    assert check_unit(Block(ROOT, 1, "ini", (), unit)) is None
    assert "twistd --nodaemon" in unit


def test_unit_files_and_nginx_blocks_are_checked(tmp_path):
    good = "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\n"
    assert check_unit(Block(tmp_path, 1, "ini", (), good)) is None
    assert check_unit(Block(tmp_path, 1, "ini", (), "ExecStart=/bin/true\n")) == (
        "line 1 is outside any [Section]")
    assert check_unit(Block(tmp_path, 1, "ini", (), "[Service]\nnonsense\n")) == (
        "line 2 is not Key=Value: 'nonsense'")
    assert is_unit(Block(tmp_path, 1, "ini", (), good))
    assert not is_unit(Block(tmp_path, 1, "ini", (), "[options]\ninstall_requires =\n    x>=1\n"))
    assert check_nginx(Block(tmp_path, 1, "nginx", (), "location / {\n"), tmp_path) == (
        "its braces do not balance")
    if NGINX is not None:
        why = check_nginx(Block(tmp_path, 1, "nginx", (), "location / { proxy_pas x; }\n"),
                          tmp_path)
        assert why.startswith("nginx -t refuses it: ") and "proxy_pas" in why
