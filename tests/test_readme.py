"""The README stays true: every setting is documented, the two commands are the first ones."""

import re
from pathlib import Path

from cloudidentity_spawner import CloudIdentitySpawner
from cloudidentity_spawner.config import CloudIdentity

README = (Path(__file__).parent.parent / "README.md").read_text()


def our_settings() -> set[str]:
    own = set(CloudIdentity.class_own_traits(config=True))
    own |= set(CloudIdentitySpawner.class_own_traits(config=True))
    return own


def test_every_setting_is_in_the_reference_with_help():
    documented = set(re.findall(r"^\| `([a-z_]+)`", README, re.M))
    missing = our_settings() - documented
    assert not missing, f"settings missing from README's reference: {sorted(missing)}"
    for name in our_settings():
        trait = CloudIdentitySpawner.class_traits()[name]
        assert len(trait.help.split()) >= 5, f"{name} needs help text an operator can act on"


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (Path(__file__).parent.parent / ".ci/run").read_text()
    assert "make test" in ci
