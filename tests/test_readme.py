"""The README stays short and true: the two commands first, a config that loads, the layout as it is."""

import re
from pathlib import Path

from traitlets.config import Config

from cloudidentity_spawner.startup import check_config

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci/run").read_text()
    assert "make test" in ci


def test_readme_is_short_and_links_only_to_what_exists():
    assert len(README) < 6000, "reference and explanation belong in docs/"
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_readme_config_is_a_valid_hub_config():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    c = Config()
    exec(compile(code, "README.md", "exec"), {"c": c})
    assert c.JupyterHub.spawner_class == "cloudidentity"
    check_config(c)  # raises ConfigError naming the rule and key if the example were wrong


def test_contributor_section_names_every_module():
    section = README.split("## Contributing", 1)[1]
    assert len([line for line in section.strip().splitlines() if line.strip()]) == 5
    package = ROOT / "cloudidentity_spawner"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {"providers", "testing"}
    missing = [m for m in sorted(modules) if f"`{m}" not in section]
    assert not missing, f"modules the README's layout does not mention: {missing}"
