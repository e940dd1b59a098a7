"""Rules → plans, and every configuration error an operator can make."""

import dataclasses
import json

import pytest

from cloudidentity_spawner.claims import Claims
from cloudidentity_spawner.errors import ConfigError, IdentityError, NoMatchingRule
from cloudidentity_spawner.plan import MANAGED_BY_LABEL, OWNER_ANNOTATION, thaw
from cloudidentity_spawner.rules import IdentityRules

ACCOUNT = "123456789012"
PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF0123456789"
MANAGED = {
    "oidc_provider_arn": PROVIDER,
    "role_path": "/jupyterhub/test/",
    "permissions_boundary": f"arn:aws:iam::{ACCOUNT}:policy/boundary",
}


def rules(*raw, hub="testhub"):
    return IdentityRules.from_config(list(raw), hub)


def user(name, *groups, **values):
    return Claims(username=name, groups=tuple(groups), values=values)


def test_first_matching_rule_wins_and_globs_match_groups():
    r = rules(
        {"name": "atlas", "match": {"groups": ["/escape/atlas*"]}, "scope": "group"},
        {"name": "escape", "match": {"groups": ["/escape/*"]}},
        {"name": "admins", "match": {"users": ["admin-*"]}},
    )
    assert r.resolve(user("a", "/escape/atlas"), "ns").rule == "atlas"
    assert r.resolve(user("b", "/escape/cms"), "ns").rule == "escape"
    assert r.resolve(user("admin-zoe"), "ns").rule == "admins"
    with pytest.raises(NoMatchingRule) as e:
        r.resolve(user("bob", "/other"), "ns")
    assert "No cloud identity is configured" in e.value.user_message
    assert "(group /other)" in e.value.user_message


def test_empty_match_matches_everyone():
    assert rules({"match": {}}).resolve(user("anyone"), "ns").rule == "rule-0"


def test_both_match_keys_match_either():
    r = rules({"match": {"groups": ["g"], "users": ["u"]}})
    assert r.resolve(user("u"), "ns").rule == "rule-0"
    assert r.resolve(user("x", "g"), "ns").rule == "rule-0"


def test_user_scope_gives_distinct_accounts_and_owner():
    r = rules({"match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jh/{{username}}"}})
    alice, bob = r.resolve(user("alice"), "ns"), r.resolve(user("bob"), "ns")
    assert alice.service_account.name == "jupyter-alice"
    assert bob.service_account.name == "jupyter-bob"
    assert alice.service_account.annotations["eks.amazonaws.com/role-arn"].endswith("role/jh/alice")
    assert alice.service_account.annotations[OWNER_ANNOTATION] == "user:alice"
    assert alice.service_account.labels[MANAGED_BY_LABEL] == "cloudidentity-spawner"


def test_group_scope_is_shared_by_members_of_the_same_group_only():
    r = rules({"name": "exp", "match": {"groups": ["/escape/*"]}, "scope": "group"})
    a1 = r.resolve(user("alice", "/escape/atlas"), "ns")
    a2 = r.resolve(user("amir", "/escape/atlas"), "ns")
    c = r.resolve(user("carl", "/escape/cms"), "ns")
    assert a1.service_account == a2.service_account
    assert a1.service_account.name != c.service_account.name
    assert a1.owner == "group:/escape/atlas"


def test_group_choice_follows_pattern_order_then_sorted_groups():
    r = rules({"match": {"groups": ["/b/*", "/a/*"]}, "scope": "group"})
    assert r.resolve(user("x", "/a/1", "/b/2", "/b/1"), "ns").group == "/b/1"


def test_hub_scope_is_one_account_for_all():
    r = rules({"name": "all", "match": {}, "scope": "hub"})
    assert r.resolve(user("a"), "ns").service_account == r.resolve(user("b"), "ns").service_account


def test_templates_escape_values_so_a_username_cannot_widen_a_policy():
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::scratch/{username}/*"}],
    }
    r = rules({"match": {}, "aws": {"managed": {**MANAGED, "inline_policy": json.dumps(policy)}}})
    for hostile in ["*", "../bob", "a/*", "${aws:username}", 'x", "Resource": "*']:
        plan = r.resolve(user(hostile), "ns")
        resource = plan.cloud.resources["role"]["inline_policy"]["Statement"][0]["Resource"]
        middle = resource[len("arn:aws:s3:::scratch/") : -len("/*")]
        assert not set(middle) & set('/*?${}"'), resource


def test_managed_role_plan_has_exact_trust_and_boundary():
    plan = rules({"match": {}, "aws": {"managed": MANAGED}}).resolve(user("alice"), "jhub")
    role = plan.cloud.resources["role"]
    statement = role["trust_policy"]["Statement"][0]
    issuer = "oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF0123456789"
    assert statement["Condition"] == {
        "StringEquals": {
            f"{issuer}:sub": "system:serviceaccount:jhub:jupyter-alice",
            f"{issuer}:aud": "sts.amazonaws.com",
        }
    }
    assert statement["Principal"] == {"Federated": PROVIDER}
    assert role["permissions_boundary"] == MANAGED["permissions_boundary"]
    assert role["arn"] == f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/test/testhub-alice"
    assert "*" not in json.dumps(thaw(role["trust_policy"]))


def test_managed_role_names_fit_iam_for_long_and_odd_usernames():
    r = rules({"match": {}, "aws": {"managed": MANAGED}})
    names = {r.resolve(user(u), "ns").cloud.resources["role"]["name"] for u in ["é" * 200, "a" * 200, "a" * 201, "A"]}
    assert len(names) == 4
    assert all(len(n) <= 64 for n in names)


def test_gcp_managed_binding_names_exactly_one_service_account():
    r = rules({"match": {}, "gcp": {"managed": {"project": "my-project"}}})
    plan = r.resolve(user("Bob.Smith@x.org"), "jhub")
    [binding] = plan.cloud.resources["bindings"]
    ksa = plan.service_account.name
    assert binding["member"] == f"serviceAccount:my-project.svc.id.goog[jhub/{ksa}]"
    assert binding["role"] == "roles/iam.workloadIdentityUser"


def test_gcp_existing_service_account_annotation():
    r = rules({"match": {}, "gcp": {"service_account": "nb-{username}@my-project.iam.gserviceaccount.com"}})
    plan = r.resolve(user("alice"), "ns")
    assert plan.service_account.annotations["iam.gke.io/gcp-service-account"] == "nb-alice@my-project.iam.gserviceaccount.com"


def test_claim_values_in_templates():
    r = rules({"match": {}, "env": {"PROJECT": "{claims[project]}"}})
    assert r.resolve(user("a", project="p1"), "ns").env["PROJECT"] == "p1"
    with pytest.raises(IdentityError) as e:
        r.resolve(user("a"), "ns")
    assert "claim 'project'" in e.value.admin_detail


def test_plan_is_immutable():
    plan = rules({"match": {}}).resolve(user("a"), "ns")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rule = "other"
    with pytest.raises(TypeError):
        plan.service_account.annotations["x"] = "y"


def test_plan_dict_has_the_documented_shape():
    data = rules({"match": {}}).resolve(user("a", "g"), "ns").to_dict()
    assert {"user", "groups", "rule", "scope", "service_account", "env", "cloud"} <= set(data)
    assert set(data["service_account"]) == {"name", "namespace", "annotations", "labels"}
    assert data["cloud"] is None


@pytest.mark.parametrize(
    "rule,fragments",
    [
        ({"name": "r", "match": {}, "colour": "red"}, ["identity_rules[0] ('r')", "'colour'"]),
        ({"name": "r", "match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/x"}, "gcp": {"service_account": "a"}}, ["('r')", "both 'aws' and 'gcp'"]),
        ({"name": "r", "match": {}, "aws": {"role_arn": "arn:aws:iam::12345:role/x"}}, ["('r').aws.role_arn", "12 digits"]),
        ({"name": "r", "match": {}, "aws": {"role_arn": f"arn:aws:s3:::{ACCOUNT}"}}, ["('r').aws.role_arn"]),
        ({"name": "r", "match": {}, "gcp": {"service_account": "{username}@gmail.com"}}, ["('r').gcp.service_account", "iam.gserviceaccount.com"]),
        ({"name": "r", "match": {}, "scope": "team"}, ["('r').scope", "'team'"]),
        ({"name": "r", "match": {"groups": "admins"}}, ["('r').match.groups", "list"]),
        ({"name": "r", "match": {"teams": []}}, ["('r').match", "'teams'"]),
        ({"name": "r"}, ["('r')", "'match'"]),
        ({"name": "r", "match": {}, "scope": "group"}, ["('r').scope", "match.groups"]),
        ({"name": "r", "match": {"groups": ["g"]}, "scope": "group", "service_account": "sa-{username}"}, ["('r').service_account", "{username}"]),
        ({"name": "r", "match": {}, "scope": "hub", "service_account": "sa-{claims[sub]}"}, ["('r').service_account", "{claims[sub]}"]),
        ({"name": "r", "match": {}, "service_account": "sa-{group}"}, ["('r').service_account", "{group}"]),
        ({"name": "r", "match": {}, "service_account": "sa-{user}"}, ["('r').service_account", "unknown field {user}"]),
        ({"name": "r", "match": {}, "service_account": "sa-{username!r}"}, ["('r').service_account", "not allowed"]),
        ({"name": "r", "match": {}, "env": {"1X": "v"}}, ["('r').env", "'1X'"]),
        # str.isalnum() says yes to these; the API server says 422.
        ({"name": "r", "match": {}, "env": {"DONNÉES": "v"}}, ["('r').env", "'DONNÉES'", "ASCII"]),
        ({"name": "r", "match": {}, "env": {"x²": "v"}}, ["('r').env", "'x²'"]),
        ({"name": "r", "match": {}, "adopt": "yes"}, ["('r').adopt"]),
        ({"name": "r", "match": {}, "aws": {"managed": {k: v for k, v in MANAGED.items() if k != "permissions_boundary"}}}, ["('r').aws.managed", "'permissions_boundary'"]),
        ({"name": "r", "match": {}, "aws": {"managed": {**MANAGED, "role_path": "jupyterhub"}}}, ["('r').aws.managed.role_path"]),
        ({"name": "r", "match": {}, "aws": {"managed": {**MANAGED, "oidc_provider_arn": "oidc.eks"}}}, ["('r').aws.managed.oidc_provider_arn"]),
        ({"name": "r", "match": {}, "aws": {"managed": {**MANAGED, "inline_policy": '{"Version": '}}}, ["('r').aws.managed.inline_policy", "not valid JSON"]),
        ({"name": "r", "match": {}, "aws": {"managed": MANAGED, "role_arn": "x"}}, ["('r').aws", "exactly one"]),
        ({"name": "r", "match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/x", "token_expiration": 5}}, ["('r').aws.token_expiration"]),
        ({"name": "r", "match": {}, "gcp": {"managed": {"project": "P"}}}, ["('r').gcp.managed.project"]),
        ({"name": "r", "match": {}, "gcp": {"managed": {"project": "my-project", "bucket_roles": [{"bucket": "bucket1", "role": "storage.admin"}]}}}, ["('r').gcp.managed.bucket_roles[0].role"]),
        ("not a dict", ["identity_rules[0]", "mapping"]),
    ],
)
def test_config_errors_name_the_rule_and_key(rule, fragments):
    with pytest.raises(ConfigError) as e:
        rules(rule)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_second_rule_errors_carry_its_index():
    with pytest.raises(ConfigError, match=r"identity_rules\[1\] \('rule-1'\)\.scope"):
        rules({"match": {}}, {"match": {}, "scope": "nope"})


def test_duplicate_rule_names_are_rejected():
    with pytest.raises(ConfigError, match=r"identity_rules\[1\].*already used by identity_rules\[0\]"):
        rules({"name": "a", "match": {}}, {"name": "a", "match": {}})


def test_rules_must_be_a_list():
    with pytest.raises(ConfigError, match="expected a list"):
        IdentityRules.from_config({"match": {}})


async def test_identity_resolver_decides_first_and_can_fall_through():
    from cloudidentity_spawner.config import CloudIdentity
    from cloudidentity_spawner.plan import IdentityPlan, ServiceAccountPlan
    from cloudidentity_spawner.rules import plan_for

    async def resolver(spawner, claims):
        if claims.username == "special":
            return IdentityPlan(user="special", groups=claims.groups, rule="resolver", scope="user",
                                owner="user:special", service_account=ServiceAccountPlan("sa-special", "ns"))
        return None

    settings = CloudIdentity(identity_rules=[{"name": "everyone", "match": {}}], identity_resolver=resolver)
    assert (await plan_for(settings, None, user("special"), "ns")).service_account.name == "sa-special"
    assert (await plan_for(settings, None, user("other"), "ns")).rule == "everyone"

    settings = CloudIdentity(identity_rules=[], identity_resolver=lambda spawner, claims: {"not": "a plan"})
    with pytest.raises(IdentityError) as e:
        await plan_for(settings, None, user("x"), "ns")
    assert "expected an IdentityPlan" in e.value.admin_detail


@pytest.mark.parametrize("where,block", [
    ("service_account", {"service_account": "jupyter-{claims[email]}"}),
    ("aws.role_arn", {"aws": {"role_arn": "arn:aws:iam::123456789012:role/jh/{claims[email]}"}}),
    ("aws.managed.role_name", {"aws": {"managed": {**MANAGED, "role_name": "jh-{claims[email]}"}}}),
    ("aws.managed.inline_policy", {"aws": {"managed": {**MANAGED, "inline_policy": {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/{claims[email]}/*"}]}}}}),
    ("gcp.service_account", {"gcp": {"service_account": "{claims[email]}@my-project.iam.gserviceaccount.com"}}),
    ("gcp.managed.account_id", {"gcp": {"managed": {"project": "my-project", "account_id": "jh-{claims[email]}"}}}),
    ("gcp.managed.bucket_roles[0].prefix", {"gcp": {"managed": {"project": "my-project", "bucket_roles": [
        {"bucket": "b-scratch", "role": "roles/storage.objectUser", "prefix": "{claims[email]}"}]}}}),
])
def test_a_claim_decides_an_identity_only_when_the_operator_trusts_it(where, block):
    """A user who can edit their e-mail at the IdP must not be able to pick someone else's identity."""
    raw = {"name": "r", "match": {}, **block}
    with pytest.raises(ConfigError) as e:
        IdentityRules.from_config([raw], "h")
    assert f"identity_rules[0] ('r').{where}" in str(e.value)
    assert "trusted_claims" in str(e.value) and "'email'" in str(e.value)
    trusted = IdentityRules.from_config([raw], "h", trusted_claims=["email"])
    plan = trusted.resolve(user("alice", email="alice-a"), "ns")
    assert "alice" in json.dumps(plan.to_dict())


def test_descriptions_and_env_may_use_any_claim():
    r = rules({"match": {}, "env": {"WHO": "{claims[name]}"},
               "gcp": {"managed": {"project": "my-project", "display_name": "{claims[name]}"}}})
    assert r.resolve(Claims("alice", (), {"name": "alice.a"}), "ns").env["WHO"] == "alice.a"


def test_trusted_claims_must_be_claim_names():
    with pytest.raises(ConfigError, match="trusted_claims"):
        IdentityRules.from_config([], "h", trusted_claims="sub")


def test_user_names_cannot_render_to_a_groups_or_hub_rules_names():
    """Users 'group-atlas', 'shared', 'escape-atlas' against group 'atlas' and hub rule 'shared',
    with the default templates: every name of theirs differs from the group's and the rule's."""
    managed = {"aws": {"managed": MANAGED}}
    r = rules({"name": "atlas", "match": {"groups": ["atlas"]}, "scope": "group", **managed},
              {"name": "shared", "match": {"users": ["hubby*"]}, "scope": "hub", **managed},
              {"name": "users", "match": {}, **managed}, hub="escape")
    group = r.resolve(user("ann", "atlas"), "ns")
    hub = r.resolve(user("hubby"), "ns")
    for name in ("group-atlas", "shared", "escape-atlas", "escape-group-atlas", "atlas"):
        plan = r.resolve(user(name), "ns")
        for shared in (group, hub):
            assert plan.service_account.name != shared.service_account.name
            assert plan.cloud.identity != shared.cloud.identity
            assert plan.cloud.resources["role"]["name"] != shared.cloud.resources["role"]["name"]


@pytest.mark.parametrize("first, second, example", [
    # The README's rules before: user 'escape-atlas' got the group's existing role.
    ({"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
      "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/escape-atlas"}},
     {"name": "users", "match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/{{username}}"}},
     "escape-atlas"),
    # Role names are unique whatever the path: another path does not separate them.
    ({"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
      "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/groups/atlas"}},
     {"name": "users", "match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/users/{{username}}"}},
     "atlas"),
    # A user's prefix and a group's prefix in the same bucket.
    ({"name": "atlas", "match": {"groups": ["atlas"]}, "scope": "group",
      "gcp": {"managed": {"project": "my-project", "bucket_roles": [
          {"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": "{group}"}]}}},
     {"name": "users", "match": {}, "gcp": {"managed": {"project": "my-project", "bucket_roles": [
         {"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": "{username}"}]}}},
     "lab-scratch/"),
    # Policies: a user's prefix beside a group's fixed one.
    ({"name": "atlas", "match": {"groups": ["atlas"]}, "scope": "group",
      "aws": {"managed": {**MANAGED, "inline_policy": {"Statement": [{"Resource": "arn:aws:s3:::b/atlas-data/*"}]}}}},
     {"name": "users", "match": {}, "aws": {"managed": {**MANAGED, "inline_policy": {
         "Statement": [{"Resource": "arn:aws:s3:::b/{username}/*"}]}}}},
     "arn:aws:s3:::b/atlas-data/*"),
    # Two user rules whose templates overlap: user 'x-bob' of one and 'bob' of the other.
    ({"name": "staff", "match": {"groups": ["staff"]}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/x-{{username}}"}},
     {"name": "users", "match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/{{username}}"}},
     "x-"),
    # ServiceAccount templates of two user rules.
    ({"name": "staff", "match": {"groups": ["staff"]}, "service_account": "jupyter-staff-{username}"},
     {"name": "users", "match": {}, "service_account": "jupyter-{username}"},
     "jupyter-staff-"),
])
def test_templates_that_can_name_the_same_thing_for_different_owners_are_refused(first, second, example):
    with pytest.raises(ConfigError) as e:
        rules(first, second)
    assert "identity_rules[1] ('users')" in str(e.value) and "identity_rules[0]" in str(e.value)
    assert "for different owners" in str(e.value) and example in str(e.value)


def test_templates_kept_apart_are_accepted():
    rules({"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
           "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/escape-atlas"}},
          {"name": "users", "match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/user-{{username}}"}},
          {"name": "everyone", "match": {}, "scope": "hub", "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/shared"}})
    rules({"name": "atlas", "match": {"groups": ["atlas"]}, "scope": "group",
           "gcp": {"managed": {"project": "my-project", "bucket_roles": [
               {"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": "groups/{group}"}]}}},
          {"name": "users", "match": {}, "gcp": {"managed": {"project": "my-project", "bucket_roles": [
              {"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": "users/{username}"}]}}})


@pytest.mark.parametrize("username", ["alice.smith@example.org", "alice_smith", "Alice", "a" * 80 + "@example.org"])
@pytest.mark.parametrize("field", ["{username}", "{safe_username}"])
def test_e_mail_style_names_render_once_within_every_targets_limits(username, field):
    """{safe_username} is made safe once, for where it lands: before, an ARN re-hashed the hashed
    name and every user with a dot, '@', '_' or a capital was refused."""
    from cloudidentity_spawner import names

    sub, rg = "0b1f6471-1bf0-4dda-aec3-cb9272f09590", "jupyterhub-identities"
    blocks = {
        "existing role": {"aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/u-{field}"}},
        "managed role": {"aws": {"managed": {**MANAGED, "role_name": f"u-{field}",
                                             "inline_policy": {"Statement": [{"Resource": f"arn:aws:s3:::b/{field}/*"}]}}}},
        "existing account": {"gcp": {"service_account": f"jh-{field}@my-project.iam.gserviceaccount.com"}},
        "managed account": {"gcp": {"managed": {"project": "my-project", "account_id": f"jh-{field}", "bucket_roles": [
            {"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": f"users/{field}"}]}}},
        "azure identity": {"azure": {"managed": {"subscription_id": sub, "resource_group": rg, "location": "westeurope",
                                                 "oidc_issuer": "https://oidc.example.org/", "identity_name": f"u-{field}"}}},
    }
    for what, block in blocks.items():
        r = rules({"name": "r", "match": {}, "service_account": f"nb-{field}", "env": {"HOME_PREFIX": f"s3://b/{field}"},
                   **block})
        plan = r.resolve(user(username), "ns")
        assert names.is_valid_ksa_name(plan.service_account.name)
        identity = plan.cloud.identity
        if what in ("existing role", "managed role"):
            assert len(identity.rsplit("/", 1)[1]) <= 64
        elif what in ("existing account", "managed account"):
            assert names.is_valid_gsa_account_id(identity.split("@")[0])
        if field == "{safe_username}":
            safe = names.ksa_name(username)
            assert plan.env["HOME_PREFIX"] == f"s3://b/{safe}"  # used as it is: one hash, not two


def test_an_account_bound_to_a_person_is_refused_to_anyone_else_but_kept_for_them():
    """Another subject, or a login with no subject, is refused; the same subject after a token
    refresh that brought no ID token (no issuer) keeps its account and the record its issuer."""
    from cloudidentity_spawner.claims import claims_from_auth_state
    from cloudidentity_spawner.kube import service_account_change

    r = rules({"name": "users", "match": {}})
    first = {"oauth_user": {"sub": "s-1", "iss": "https://iam.example.org/"}}
    made = service_account_change(None, r.resolve(claims_from_auth_state("alice", first), "ns")).body["metadata"]
    existing = {"labels": made["labels"], "annotations": made["annotations"]}
    for state in ({"oauth_user": {"sub": "s-2", "iss": "https://iam.example.org/"}},  # another person
                  {"oauth_user": {"sub": "s-1", "iss": "https://other.example.org/"}},  # same sub, other issuer
                  {"oauth_user": {"preferred_username": "alice"}}):  # no subject at all
        with pytest.raises(IdentityError, match="another account"):
            service_account_change(existing, r.resolve(claims_from_auth_state("alice", state), "ns"))
    refreshed = {"oauth_user": {"sub": "s-1"}}  # no iss, no id_token
    assert service_account_change(existing, r.resolve(claims_from_auth_state("alice", refreshed), "ns")).action == "none"


_SUB, _RG = "0b1f6471-1bf0-4dda-aec3-cb9272f09590", "jupyterhub-identities"
_CONTAINERS = f"/subscriptions/{_SUB}/resourceGroups/{_RG}/providers/Microsoft.Storage/storageAccounts/lab/blobServices/default/containers"


def _azure(scope_template):
    return {"azure": {"managed": {"subscription_id": _SUB, "resource_group": _RG, "location": "westeurope",
                                  "oidc_issuer": "https://oidc.example.org/", "role_assignments": [
                                      {"scope": scope_template, "role": "Storage Blob Data Contributor"}]}}}


@pytest.mark.parametrize("raw_rules", [
    # A Pod Identity role: user 'admin' would get an association to the hub rule's admin role.
    [{"name": "ops", "match": {"users": ["ops*"]}, "scope": "hub",
      "aws": {"pod_identity": {"cluster": "c", "role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/admin"}}},
     {"name": "users", "match": {}, "aws": {"pod_identity": {"cluster": "c", "role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/{{username}}"}}}],
    # One reaches under the other: user 'groups' would get data/groups/*, every group's data.
    [{"name": "teams", "match": {"groups": ["*"]}, "scope": "group", "aws": {"managed": {**MANAGED, "inline_policy": {
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::data/groups/{group}/*"}]}}}},
     {"name": "users", "match": {}, "aws": {"managed": {**MANAGED, "inline_policy": {
         "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::data/{username}/*"}]}}}}],
    # A managed folder holds the folders under it: user 'atlas' would reach projects/atlas/data/.
    [{"name": "shared", "match": {"users": ["x*"]}, "scope": "hub", "gcp": {"managed": {"project": "my-project", "bucket_roles": [
        {"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": "projects/atlas/data"}]}}},
     {"name": "users", "match": {}, "gcp": {"managed": {"project": "my-project", "bucket_roles": [
         {"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": "projects/{username}"}]}}}],
    # {namespace} differs per user with user namespaces (jupyterhub-<user>).
    [{"name": "staff", "match": {"users": ["s*"]}, "scope": "hub", "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jh/jupyterhub-staff"}},
     {"name": "users", "match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jh/{{namespace}}"}}],
    # Two templates of one rule, of different owners: user 'atlas' would get group atlas's share.
    [{"name": "users", "match": {"groups": ["*"]}, "aws": {"managed": {**MANAGED, "inline_policy": {"Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": ["arn:aws:s3:::data/{username}/*", "arn:aws:s3:::data/{group}/*"]}]}}}}],
    # The same template in rules 'a' and 'a-b': user 'b-alice' of 'a' and 'alice' of 'a-b' meet.
    [{"name": "a", "match": {"groups": ["x"]}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jh/{{rule}}-{{username}}"}},
     {"name": "a-b", "match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jh/{{rule}}-{{username}}"}}],
    # IAM role names are case-insensitive: user 'readonly' would be role User-ReadOnly.
    [{"name": "ro", "match": {"users": ["r*"]}, "scope": "hub", "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jh/User-ReadOnly"}},
     {"name": "users", "match": {}, "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jh/user-{{username}}"}}],
    # Azure role assignment scopes: user 'atlas' would get group atlas's container.
    [{"name": "teams", "match": {"groups": ["*"]}, "scope": "group", **_azure(_CONTAINERS + "/{group}")},
     {"name": "users", "match": {}, **_azure(_CONTAINERS + "/{username}")}],
], ids=["pod-identity", "policy-under", "folder-under", "namespace", "one-rule", "rule-field", "case", "azure-scope"])
def test_what_the_attacker_review_found_is_refused_too(raw_rules):
    with pytest.raises(ConfigError, match="for different owners"):
        rules(*raw_rules)


def test_a_description_claim_cannot_forge_the_person_a_google_account_records():
    """A description template may carry claims the user edits; the person is read only from the
    marker that ends the description."""
    from cloudidentity_spawner.claims import claims_from_auth_state
    from cloudidentity_spawner.providers.gcp import recorded_person

    r = rules({"name": "users", "match": {}, "gcp": {"managed": {"project": "my-project",
                                                                   "description": "Notebook of {claims[name]}"}}})
    victim = claims_from_auth_state("alice", {"oauth_user": {"sub": "victim", "iss": "https://iam.example.org/"}})
    forged = f"person={victim.person} [cloudidentity-spawner hub=testhub owner=0]"
    attacker = claims_from_auth_state("alice", {"oauth_user": {"sub": "attacker", "iss": "https://iam.example.org/",
                                                               "name": forged}})
    description = r.resolve(attacker, "ns").cloud.resources["service_account"]["description"]
    assert forged in description
    assert recorded_person(description) == attacker.person != victim.person


def test_rules_can_match_jupyterhub_admins_and_roles():
    """2i2c's singleuserAdmin.serviceAccountName, as a rule: admins get an identity of their own."""
    r = rules({"name": "admins", "match": {"admin": True}, "scope": "hub"},
              {"name": "graders", "match": {"roles": ["grader-*"], "groups": ["/staff"]}},
              {"name": "everyone", "match": {}})
    assert r.resolve(dataclasses.replace(user("ann"), admin=True), "ns").rule == "admins"
    assert r.resolve(dataclasses.replace(user("bob"), roles=("grader-fall",)), "ns").rule == "graders"
    assert r.resolve(user("cid", "/staff"), "ns").rule == "graders"  # either key matches
    assert r.resolve(user("dan"), "ns").rule == "everyone"
    with pytest.raises(ConfigError, match=r"match\.admin: expected true"):
        rules({"name": "x", "match": {"admin": "yes"}})


CLUSTER = "https://container.googleapis.com/v1/projects/my-project/locations/europe-west4/clusters/hub"


def test_a_gcp_rule_naming_its_cluster_gives_pods_a_token_googles_sts_exchanges():
    """With ``cluster``, the plan carries the pod's token for the cluster's pool and the STS
    audience GKE's own exchange uses; with a Google service account, the account to impersonate."""
    gsa = rules({"name": "g", "match": {}, "gcp": {"cluster": CLUSTER, "service_account": "nb-{username}@my-project.iam.gserviceaccount.com"}})
    pod = thaw(gsa.resolve(user("alice"), "ns").cloud.resources["pod"])
    assert pod == {"audience": "my-project.svc.id.goog", "expiration": 600, "env": {
        "CLOUDIDENTITY_GCP_TOKEN_FILE": "/var/run/secrets/cloudidentity/gcp/token",
        "CLOUDIDENTITY_GCP_STS_AUDIENCE": f"identitynamespace:my-project.svc.id.goog:{CLUSTER}",
        "CLOUDIDENTITY_GCP_SERVICE_ACCOUNT": "nb-alice@my-project.iam.gserviceaccount.com"}}
    without = rules({"name": "g", "match": {}, "gcp": {"service_account": "nb-{username}@my-project.iam.gserviceaccount.com"}})
    assert "pod" not in without.resolve(user("alice"), "ns").cloud.resources


@pytest.mark.parametrize("block, key", [
    ({"cluster": "https://evil.example.org/v1/projects/my-project/locations/x/clusters/hub",
      "service_account": "nb@my-project.iam.gserviceaccount.com"}, "gcp.cluster"),
    ({"cluster": CLUSTER + "/../other", "service_account": "nb@my-project.iam.gserviceaccount.com"}, "gcp.cluster"),
    ({"cluster": CLUSTER.replace("my-project", "other-project"),
      "principal": {"project": "my-project", "project_number": "123456789012", "project_roles": ["roles/viewer"]}},
     "gcp.principal.workload_identity_pool"),
])
def test_a_cluster_that_is_not_gkes_or_not_the_pools_stops_the_hub(block, key):
    with pytest.raises(ConfigError) as e:
        rules({"name": "g", "match": {}, "gcp": block})
    assert f"('g').{key}" in str(e.value)
