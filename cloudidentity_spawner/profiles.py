"""Per-group profile selection for KubeSpawner's ``profile_list``.

Operators add ``allowed_groups`` (shell-style globs) to a profile, to one of
its ``profile_options``, to one choice of an option, or to an option's
``unlisted_choice`` (the free-text field). Without it, everyone sees the item.
A profile may also name the identity rule its servers use (``identity_rule``).

The form shows only what a user's groups allow, and a submitted selection is
checked again against the same filtered list, so posting a hidden slug, a
hidden choice or an unlisted value (through the form or the REST API) is
refused with a clear message. Pure functions; the spawner supplies the groups.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

from .errors import IdentityError


class ProfileNotAllowed(IdentityError):
    """The selected profile, choice or value is not available to this user."""


def allowed(item: Mapping[str, Any], groups: Sequence[str]) -> bool:
    patterns = item.get("allowed_groups")
    if patterns is None:
        return True
    return any(fnmatchcase(group, pattern) for pattern in patterns for group in groups)


def visible_profiles(profile_list: Iterable[Mapping[str, Any]], groups: Sequence[str]) -> list[dict[str, Any]]:
    """A copy of *profile_list* with only what *groups* allow, defaults kept valid."""
    visible = []
    for profile in copy.deepcopy(list(profile_list)):
        if not allowed(profile, groups):
            continue
        options = profile.get("profile_options") or {}
        for name in list(options):
            option = options[name]
            if not allowed(option, groups):
                del options[name]
                continue
            choices = option.get("choices")
            if choices:
                option["choices"] = {k: v for k, v in choices.items() if allowed(v, groups)}
                if option["choices"] and not any(c.get("default") for c in option["choices"].values()):
                    next(iter(option["choices"].values()))["default"] = True
            unlisted = option.get("unlisted_choice")
            if unlisted and unlisted.get("enabled") and not allowed(unlisted, groups):
                unlisted["enabled"] = False
            if not option.get("choices") and not (option.get("unlisted_choice") or {}).get("enabled"):
                del options[name]  # nothing left to choose
        visible.append(profile)
    if visible and not any(p.get("default") for p in visible):
        visible[0]["default"] = True
    return visible


def check_selection(visible: Sequence[Mapping[str, Any]], user_options: Mapping[str, Any], configured: bool) -> Mapping[str, Any] | None:
    """The selected visible profile, or ProfileNotAllowed saying what was refused."""
    if not configured:
        return None
    if not visible:
        raise ProfileNotAllowed(
            "No server profiles are available to your groups; ask your hub admin.",
            "every profile in profile_list has allowed_groups that exclude this user",
        )
    slug = user_options.get("profile")
    if not slug:
        return next(p for p in visible if p.get("default"))
    profile = next((p for p in visible if p.get("slug") == slug), None)
    if profile is None:
        raise ProfileNotAllowed(
            f"The server profile {slug!r} is not available to you.",
            f"refused profile {slug!r}: not in the profiles visible to this user ({', '.join(p['slug'] for p in visible)})",
        )
    for name, option in (profile.get("profile_options") or {}).items():
        choice = user_options.get(name)
        unlisted = user_options.get(f"{name}--unlisted-choice")
        if unlisted and not (option.get("unlisted_choice") or {}).get("enabled"):
            raise ProfileNotAllowed(
                f"A custom value for {option.get('display_name', name)!r} is not available to you.",
                f"refused unlisted value {unlisted!r} for option {name!r} of profile {slug!r}",
            )
        if choice and not unlisted and choice not in (option.get("choices") or {}):
            raise ProfileNotAllowed(
                f"The choice {choice!r} for {option.get('display_name', name)!r} is not available to you.",
                f"refused choice {choice!r} for option {name!r} of profile {slug!r}",
            )
    return profile


def unenforceable_profile_setting(profile_list: Iterable[Mapping[str, Any]]) -> str | None:
    """What in *profile_list* only ``CloudIdentitySpawner`` can enforce, or None.

    The plain ``pre_spawn_hook`` runs before KubeSpawner applies the chosen profile, so
    it cannot filter profiles by group (``allowed_groups``), follow a profile's
    ``identity_rule``, or stay the last ``modify_pod_hook`` when a profile sets its own.
    """
    fix = "use c.JupyterHub.spawner_class = 'cloudidentity' to enforce it"

    def overrides(item: Mapping[str, Any], where: str) -> str | None:
        if "modify_pod_hook" in (item.get("kubespawner_override") or {}):
            return f"{where} sets modify_pod_hook in kubespawner_override, which would replace the identity pin; {fix}"
        return None

    for profile in profile_list or []:
        where = f"profile {profile.get('slug') or profile.get('display_name')!r}"
        for key in ("allowed_groups", "identity_rule"):
            if key in profile:
                return f"{where} uses {key}, which the pre_spawn_hook cannot enforce; {fix}"
        found = overrides(profile, where)
        for name, option in (profile.get("profile_options") or {}).items():
            items = [(f"{where} option {name!r}", option)]
            items += [(f"{where} option {name!r} choice {c!r}", v) for c, v in (option.get("choices") or {}).items()]
            unlisted = option.get("unlisted_choice")
            if unlisted:
                items.append((f"{where} option {name!r} unlisted_choice", unlisted))
            for label, item in items:
                if "allowed_groups" in item:
                    return f"{label} uses allowed_groups, which the pre_spawn_hook cannot enforce; {fix}"
                found = found or overrides(item, label)
        if found:
            return found
    return None
