"""The documentation builds without a warning and its reference lists every setting and command."""

from __future__ import annotations

import html as html_module
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cloudidentity_spawner.cli import build_parser
from cloudidentity_spawner.config import CloudIdentity
from cloudidentity_spawner.spawner import CloudIdentitySpawner

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return out


def documented_settings(html: str) -> set[tuple[str, str]]:
    """Each setting's heading on the built page: ``c.<section>.<name>``."""
    return set(re.findall(r'<h3[^>]*>\s*<code[^>]*><span class="pre">c\.(CloudIdentity\w*)\.([a-z0-9_]+)</span>', html))


def test_reference_lists_every_setting_with_its_help(built):
    html = (built / "reference" / "configuration.html").read_text()
    expected = {("CloudIdentity", name) for name in CloudIdentity.class_own_traits(config=True)}
    expected |= {("CloudIdentitySpawner", name) for name in CloudIdentitySpawner.class_own_traits(config=True)}
    assert documented_settings(html) == expected  # ours, each once, and none of KubeSpawner's
    words = " ".join(re.findall(r"[A-Za-z]+", html_module.unescape(re.sub(r"<[^>]+>", " ", html))))
    for _, name in expected:
        trait = CloudIdentitySpawner.class_traits()[name]
        assert len(trait.help.split()) >= 5, f"{name} needs help text an operator can act on"
        opening = " ".join(re.findall(r"[A-Za-z]+", trait.help)[:6])
        assert opening in words, f"the help of {name} is not on the page"


def test_cli_reference_shows_every_command(built):
    text = (built / "reference" / "cli.html").read_text()
    commands = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, parser in commands.items():
        assert f"cloudidentity-spawner {name}" in text
        for action in parser._actions:
            for option in action.option_strings:
                assert option in text, f"{name} {option}"


def test_every_page_is_reachable_from_the_index(built):
    pages = {p.relative_to(DOCS).with_suffix("").as_posix() for p in DOCS.rglob("*.md") if "_build" not in p.parts}
    index = (built / "index.html").read_text()
    unreachable = [page for page in pages - {"index"} if f'href="{page}.html"' not in index]
    assert not unreachable


def test_the_generated_reference_parts_are_current():
    """The reference pages hold each command's help and each setting's help as text (read on a
    forge too); they must say what the code says: ``python docs/reference_pages.py`` rewrites them."""
    sys.path.insert(0, str(DOCS))
    try:
        import reference_pages
    finally:
        sys.path.remove(str(DOCS))
    assert reference_pages.stale() == []
    for page in ("cli.md", "configuration.md"):
        text = (DOCS / "reference" / page).read_text()
        assert "eval-rst" not in text and "CLI_HELP" not in text
        assert not re.search(r"(?<!`)``(?!`)", text)  # no RST literals: Markdown shows them as they are
