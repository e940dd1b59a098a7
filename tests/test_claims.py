"""Group claims from the providers hubs log in with, from recorded-shape samples."""

import base64
import json
from pathlib import Path

import pytest

from cloudidentity_spawner.claims import (
    claims_from_auth_state,
    entitlement_group,
    find_user_claims,
)
from cloudidentity_spawner.auth import auth_state_groups
from cloudidentity_spawner.errors import ClaimsError

EXAMPLES = Path(__file__).parent.parent / "examples" / "claims"


def test_escape_indigo_iam_groups_wlcg_groups_and_entitlements():
    auth_state = json.loads((EXAMPLES / "escape-iam-alice.json").read_text())
    claims = claims_from_auth_state("alice", auth_state)
    assert claims.groups == ("escape", "escape/atlas", "/escape", "/escape/atlas")
    assert claims.values["preferred_username"] == "alice"


def test_entitlements_alone_become_group_paths():
    auth_state = {
        "oauth_user": {
            "sub": "x",
            "eduperson_entitlement": [
                "urn:mace:egi.eu:group:vo.escape.eu:role=member#aai.egi.eu",
                "urn:mace:egi.eu:group:vo.escape.eu:analysis:role=manager#aai.egi.eu",
                "urn:mace:egi.eu:res:some-service#aai.egi.eu",
            ],
        }
    }
    claims = claims_from_auth_state("alice", auth_state, group_claims=["eduperson_entitlement"], authorities=["aai.egi.eu"])
    assert claims.groups == ("/vo.escape.eu", "/vo.escape.eu/analysis")
    # Not trusted (no issuer in the claims, none listed): the same entitlements keep their authority.
    untrusted = claims_from_auth_state("alice", auth_state, group_claims=["eduperson_entitlement"])
    assert untrusted.groups == ("urn:mace:egi.eu:group:vo.escape.eu#aai.egi.eu",
                                "urn:mace:egi.eu:group:vo.escape.eu:analysis#aai.egi.eu")


@pytest.mark.parametrize(
    "urn,group",
    [
        ("urn:geant:example.org:group:atlas#idp.example.org", "/atlas"),
        ("urn:mace:egi.eu:group:escape:atlas:role=member#iam.escape.eu", "/escape/atlas"),
        ("urn:mace:egi.eu:group:escape:atlas:role=member#aai.egi.eu", "/escape/atlas"),  # namespace#authority listed
        ("urn:mace:egi.eu:group:escape", "urn:mace:egi.eu:group:escape"),  # no authority: never trusted
        ("urn:geant:eduteams.org:service:eduteams:group:escape:atlas#eduteams.org",
         "urn:geant:eduteams.org:service:eduteams:group:escape:atlas#eduteams.org"),
        ("urn:geant:other.org:group:escape:atlas#aai.egi.eu", "urn:geant:other.org:group:escape:atlas#aai.egi.eu"),
        ("urn:mace:egi.eu:res:rcauth#aai.egi.eu", None),
        ("not a urn", None),
    ],
)
def test_aarc_g002_entitlement_parsing(urn, group):
    assert entitlement_group(urn, ["idp.example.org", "iam.escape.eu", "urn:mace:egi.eu#aai.egi.eu"]) == group


def test_a_team_made_elsewhere_is_not_the_vos_group():
    """mallory is in /escape only; her eduTEAMS team called escape:atlas is not ESCAPE's atlas -
    not for the rules, not for JupyterHub's groups (allowed_groups), not for the shipped example."""
    state = json.loads((EXAMPLES / "escape-iam-mallory.json").read_text())
    groups = claims_from_auth_state("mallory", state).groups
    assert "/escape/atlas" not in groups and "/escape" in groups
    assert "urn:geant:eduteams.org:service:eduteams:group:escape:atlas#eduteams.org" in groups
    assert "/escape/atlas" not in auth_state_groups(state)
    alice = json.loads((EXAMPLES / "escape-iam-alice.json").read_text())
    assert "/escape/atlas" in auth_state_groups(alice)  # the issuer's own entitlement still counts
    # The issuer read from the stored ID token when the userinfo has no "iss".
    payload = base64.urlsafe_b64encode(json.dumps({"iss": "https://iam-escape.cloud.cnaf.infn.it/"}).encode()).decode().rstrip("=")
    del alice["oauth_user"]["iss"], alice["oauth_user"]["wlcg.groups"], alice["oauth_user"]["groups"]
    assert claims_from_auth_state("alice", alice).groups == ("urn:mace:egi.eu:group:escape#iam-escape.cloud.cnaf.infn.it",
                                                             "urn:mace:egi.eu:group:escape:atlas#iam-escape.cloud.cnaf.infn.it")
    alice["id_token"] = f"e30.{payload}.sig"
    assert claims_from_auth_state("alice", alice).groups == ("/escape", "/escape/atlas")


def test_keycloak_full_group_paths_and_dotted_role_claim():
    auth_state = json.loads((EXAMPLES / "keycloak-carol.json").read_text())
    claims = claims_from_auth_state("carol", auth_state, group_claims=["groups", "realm_access.roles"])
    assert claims.groups == ("/staff", "/staff/admins", "offline_access", "uma_authorization")


def test_okta_groups():
    auth_state = {"oauth_user": {"sub": "00u1", "groups": ["Everyone", "Data Science"]}}
    assert claims_from_auth_state("erin", auth_state).groups == ("Everyone", "Data Science")


def test_azure_ad_group_object_ids_under_the_user_key():
    auth_state = {
        "user": {
            "oid": "d1f9",
            "groups": ["9b4e2a8c-1f7d-4e3b-a6c5-0d8e7f6a5b4c", "3c2d1e0f-9a8b-7c6d-5e4f-3a2b1c0d9e8f"],
        }
    }
    claims = claims_from_auth_state("frank", auth_state)
    assert claims.groups[0] == "9b4e2a8c-1f7d-4e3b-a6c5-0d8e7f6a5b4c"


def test_azure_ad_group_overage_is_reported_clearly():
    auth_state = {
        "user": {
            "oid": "d1f9",
            "_claim_names": {"groups": "src1"},
            "_claim_sources": {"src1": {"endpoint": "https://graph.windows.net/x/users/y/getMemberObjects"}},
        }
    }
    with pytest.raises(ClaimsError) as e:
        claims_from_auth_state("frank", auth_state)
    assert "overage" in e.value.admin_detail
    assert "too many groups" in e.value.user_message


def test_github_teams_become_org_colon_team():
    auth_state = {
        "github_user": {"login": "gina", "id": 42},
        "teams": [
            {"slug": "data-eng", "organization": {"login": "acme"}},
            {"slug": "ops", "organization": {"login": "acme"}},
        ],
    }
    assert claims_from_auth_state("gina", auth_state).groups == ("acme:data-eng", "acme:ops")


def test_jupyterhub_groups_are_merged_without_duplicates():
    auth_state = {"oauth_user": {"sub": "x", "groups": ["a", "b"]}}
    assert claims_from_auth_state("h", auth_state, ["b", "c"]).groups == ("a", "b", "c")


def test_configured_claims_key():
    auth_state = {"custom": {"sub": "x", "groups": ["g"]}, "oauth_user": {"groups": ["other"]}}
    assert claims_from_auth_state("h", auth_state, claims_key="custom").groups == ("g",)


@pytest.mark.parametrize(
    "userinfo,fragment",
    [
        ({"groups": None}, "'groups' is null"),
        ({"groups": "admins"}, "'groups' is a str"),
        ({"groups": ["ok", 7]}, "item 1 is a int"),
        ({"groups": {"a": 1}}, "'groups' is a dict"),
        ({"wlcg.groups": [None]}, "'wlcg.groups' item 0 is a NoneType"),
    ],
)
def test_malformed_group_claims_give_specific_errors(userinfo, fragment):
    with pytest.raises(ClaimsError) as e:
        claims_from_auth_state("x", {"oauth_user": {"sub": "x", **userinfo}})
    assert fragment in e.value.admin_detail
    assert "hub admin" in e.value.user_message


def test_missing_auth_state_says_how_to_fix_it():
    with pytest.raises(ClaimsError) as e:
        find_user_claims(None)
    assert "enable_auth_state" in e.value.admin_detail


def test_auth_state_without_claims_names_the_keys_present():
    with pytest.raises(ClaimsError) as e:
        find_user_claims({"access_token": "t", "refresh_token": "r"})
    assert "access_token" in e.value.admin_detail
    assert "auth_state_claims_key" in e.value.admin_detail


def test_malformed_github_teams():
    with pytest.raises(ClaimsError, match="team"):
        claims_from_auth_state("g", {"github_user": {"login": "g"}, "teams": [{"slug": "x"}]})
