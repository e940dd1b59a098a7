"""Per-group profiles: the form shows only what a user's groups allow, and the server re-checks."""

from __future__ import annotations

import pytest

from cloudidentity_spawner import CloudIdentitySpawner
from cloudidentity_spawner.profiles import ProfileNotAllowed, check_selection, visible_profiles
from cloudidentity_spawner.errors import SpawnRefused

from .kubehelpers import SpawnUser, make_spawner, oidc_state, read, spawner_config

PROFILES = [
    {"display_name": "Small", "slug": "small", "default": True,
     "profile_options": {
         "image": {
             "display_name": "Image",
             "choices": {
                 "minimal": {"display_name": "Minimal", "kubespawner_override": {"image": "minimal:1"}},
                 "root-analysis": {"display_name": "ROOT", "allowed_groups": ["/escape/atlas"],
                                   "kubespawner_override": {"image": "root:6"}},
             },
             "unlisted_choice": {"enabled": True, "display_name": "Any image", "allowed_groups": ["/escape/admins"],
                                 "kubespawner_override": {"image": "{value}"}},
         }
     }},
    {"display_name": "GPU + project bucket", "slug": "atlas-gpu", "allowed_groups": ["/escape/atlas*"],
     "identity_rule": "atlas-project", "kubespawner_override": {"cpu_limit": 4}},
]
RULES = [
    # Everyone in ESCAPE gets their own role first; only the GPU profile uses the project's.
    {"name": "members", "match": {"groups": ["/escape*"]},
     "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/user-{username}"}},
    {"name": "atlas-project", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
     "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/atlas-project"}},
]


def slugs(profiles):
    return [p["slug"] for p in profiles]


def test_profiles_choices_and_unlisted_values_are_filtered_by_group():
    atlas = visible_profiles(PROFILES, ["/escape", "/escape/atlas"])
    assert slugs(atlas) == ["small", "atlas-gpu"]
    assert set(atlas[0]["profile_options"]["image"]["choices"]) == {"minimal", "root-analysis"}
    assert atlas[0]["profile_options"]["image"]["unlisted_choice"]["enabled"] is False
    member = visible_profiles(PROFILES, ["/escape"])
    assert slugs(member) == ["small"]
    assert set(member[0]["profile_options"]["image"]["choices"]) == {"minimal"}
    admin = visible_profiles(PROFILES, ["/escape/admins"])
    assert admin[0]["profile_options"]["image"]["unlisted_choice"]["enabled"] is True
    assert PROFILES[1]["allowed_groups"] == ["/escape/atlas*"]  # the configured list is not modified


@pytest.mark.parametrize(
    "options,message",
    [
        ({"profile": "atlas-gpu"}, "The server profile 'atlas-gpu' is not available to you."),
        ({"profile": "small", "image": "root-analysis"}, "The choice 'root-analysis' for 'Image' is not available to you."),
        ({"profile": "small", "image--unlisted-choice": "evil:latest"}, "A custom value for 'Image' is not available to you."),
    ],
)
def test_hidden_selections_are_refused(options, message):
    with pytest.raises(ProfileNotAllowed) as e:
        check_selection(visible_profiles(PROFILES, ["/escape"]), options, configured=True)
    assert e.value.user_message == message


def test_nothing_visible_is_refused():
    with pytest.raises(ProfileNotAllowed, match="No server profiles"):
        check_selection(visible_profiles(PROFILES[1:], ["/other"]), {}, configured=True)


def spawner_for(namespace, name, groups, profile_list=PROFILES):
    c = spawner_config(namespace, RULES, KubeSpawner__profile_list=profile_list)
    return make_spawner(CloudIdentitySpawner, c, SpawnUser(name, oidc_state(**{"wlcg.groups": list(groups)})))


async def test_form_shows_only_what_the_users_groups_allow(namespace):
    atlas_form = await spawner_for(namespace, "alice", ["/escape", "/escape/atlas"]).get_options_form()
    member_form = await spawner_for(namespace, "carl", ["/escape"]).get_options_form()
    assert "atlas-gpu" in atlas_form and "root-analysis" in atlas_form
    assert "atlas-gpu" not in member_form and "root-analysis" not in member_form
    assert "Any image" not in member_form


async def test_callable_profile_lists_are_filtered_too(namespace):
    async def profiles(spawner):
        return PROFILES

    form = await spawner_for(namespace, "carl", ["/escape"], profile_list=profiles).get_options_form()
    assert "Small" in form and "atlas-gpu" not in form


async def test_rest_api_request_for_a_hidden_profile_is_refused(namespace, caplog):
    spawner = spawner_for(namespace, "carl", ["/escape"])
    spawner.user_options = {"profile": "atlas-gpu"}  # as POST /hub/api/users/carl/server sends it
    with pytest.raises(SpawnRefused) as e:
        await spawner.start()
    assert e.value.jupyterhub_message == "The server profile 'atlas-gpu' is not available to you."
    assert any("refused profile 'atlas-gpu'" in r.getMessage() for r in caplog.records)
    assert await read("pod", namespace, spawner.pod_name) is None
    assert await read("serviceaccount", namespace, "jupyter-carl") is None


async def test_profile_names_the_identity_rule(namespace):
    spawner = spawner_for(namespace, "alice", ["/escape", "/escape/atlas"])
    spawner.user_options = spawner.options_from_form({"profile": ["small"]})
    await spawner.start()
    await spawner.stop()
    assert spawner.service_account == "jupyter-alice"  # small: the first matching rule, user scope
    gpu = spawner_for(namespace, "alice", ["/escape", "/escape/atlas"])
    gpu.user_options = {"profile": "atlas-gpu"}
    await gpu.start()
    pod = await read("pod", namespace, gpu.pod_name)
    await gpu.stop()
    sa = await read("serviceaccount", namespace, pod["spec"]["serviceAccountName"])
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/jupyterhub/atlas-project")
    assert sa["metadata"]["annotations"]["cloudidentity-spawner/rule"] == "atlas-project"
    assert pod["spec"]["serviceAccountName"] != "jupyter-alice"


async def test_removed_from_a_group_loses_its_identity_at_next_spawn(namespace):
    user = SpawnUser("dora", oidc_state(**{"wlcg.groups": ["/escape", "/escape/atlas"]}))
    c = spawner_config(namespace, list(reversed(RULES)))  # the group's identity first
    first = make_spawner(CloudIdentitySpawner, c, user)
    await first.start()
    await first.stop()
    assert (await read("pod", namespace, first.pod_name)) is None
    atlas_account = first.service_account
    # The refreshed login (refresh_pre_spawn) no longer lists the group.
    user.auth_state = oidc_state(**{"wlcg.groups": ["/escape"]})
    second = make_spawner(CloudIdentitySpawner, c, user)
    await second.start()
    pod = await read("pod", namespace, second.pod_name)
    await second.stop()
    assert atlas_account != "jupyter-dora"
    assert pod["spec"]["serviceAccountName"] == "jupyter-dora"


async def test_a_failing_resolver_leaves_the_form_without_an_identity_line(caplog):
    from cloudidentity_spawner.claims import Claims

    def broken(spawner, claims):
        raise RuntimeError("directory down")

    c = spawner_config("ns", [{"name": "everyone", "match": {}}], identity_resolver=broken)
    s = make_spawner(CloudIdentitySpawner, c, SpawnUser("ann", oidc_state()))
    assert await s._identity_line(Claims("ann", ())) == ("", None)
    assert any("cannot preview the identity of ann" in r.getMessage() for r in caplog.records)
    c = spawner_config("ns", [{"name": "everyone", "match": {}}])
    s = make_spawner(CloudIdentitySpawner, c, SpawnUser("ann", oidc_state()))
    assert "Your server will run with no cloud identity (rule everyone" in (await s._identity_line(Claims("ann", ())))[0]
