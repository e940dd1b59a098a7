"""A local Google Cloud IAM server for tests and the demo (no emulator exists for these APIs).

It implements the documented behaviour of the calls this package makes, over
the same wire protocols the real client libraries use:

* IAM Admin API (``google.iam.admin.v1.IAM``) over gRPC: Create/Get/Delete
  ServiceAccount and Get/SetIamPolicy on service accounts - resource names
  ``projects/<p>/serviceAccounts/<email>`` (``-`` for any project),
  ALREADY_EXISTS on a duplicate id, INVALID_ARGUMENT on a bad id, NOT_FOUND,
  RESOURCE_EXHAUSTED past the per-project quota (100 by default);
* Resource Manager v3 over REST: ``projects/<p>:getIamPolicy`` /
  ``:setIamPolicy``; 403 for an unknown project, as the real API answers;
* Cloud Storage JSON API (:mod:`.gcs`): buckets, objects, managed folders and
  their IAM policies, each request authorised by evaluating the IAM policies
  that apply - conditions in CEL (:mod:`.iam_conditions`) - for callers with a
  token from :meth:`GoogleCloudState.access_token`;
* Security Token Service and IAM Credentials for GKE's Workload Identity used from outside
  the cluster's nodes (:class:`GoogleTokenService`): Kubernetes ServiceAccount tokens checked
  against the cluster's keys, exchanged for the account's principal or a Google service
  account it may act as.

Every policy carries an etag that changes on every write; a write with a stale
etag is refused (ABORTED over gRPC, 409 ABORTED on Resource Manager, 412 on
Storage), so read-modify-write retries can be tested for real.
"""

from __future__ import annotations

import base64
import copy
import itertools
import random
import re
import secrets
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from aiohttp import web
from google.cloud.iam_admin_v1 import types
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import empty_pb2
from google.type import expr_pb2

from .gcs import StorageFace
from .iam_conditions import ConditionError, compile_condition


_PRINCIPAL = re.compile(
    r"principal(?:Set)?://iam\.googleapis\.com/projects/(?P<number>[0-9]+)/locations/global/"
    r"workloadIdentityPools/(?P<pool>[a-z0-9.-]+)/(?:subject/ns/[a-z0-9]([-a-z0-9]*[a-z0-9])?/sa/[a-z0-9.-]+|[a-z./]+)"
)
_ACCOUNT_ID = re.compile(r"[a-z](?:[-a-z0-9]{4,28}[a-z0-9])")


class _Policies:
    """IAM policies by resource, with etags that change on every write."""

    def __init__(self):
        self._policies: dict[str, dict[str, Any]] = {}
        self._counter = itertools.count(1)
        self.writes: list[str] = []
        self.added_at: dict[tuple[str, str, str], float] = {}
        """When each (resource, role, member) grant appeared (``time.monotonic()``)."""

    def get(self, resource: str) -> dict[str, Any]:
        policy = self._policies.get(resource)
        if policy is None:
            policy = self._policies[resource] = {"version": 1, "bindings": [], "etag": self._etag()}
        return copy.deepcopy(policy)

    def _etag(self) -> bytes:
        return b"etag-" + str(next(self._counter)).encode()

    def set(self, resource: str, policy: dict[str, Any]) -> dict[str, Any] | None:
        """Store *policy*; None if its etag is stale (the caller answers with a conflict)."""
        current = self.get(resource)
        if policy.get("etag") and policy["etag"] != current["etag"]:
            return None
        stored = {"version": policy.get("version", 1), "bindings": policy.get("bindings", []), "etag": self._etag()}
        before = {(b["role"], m) for b in current["bindings"] for m in b["members"]}
        for binding in stored["bindings"]:
            for member in binding["members"]:
                if (binding["role"], member) not in before:
                    self.added_at[(resource, binding["role"], member)] = time.monotonic()
        self._policies[resource] = stored
        self.writes.append(resource)
        return copy.deepcopy(stored)

    def drop(self, resource: str) -> None:
        self._policies.pop(resource, None)

    def mark_deleted(self, member: str, uid: str) -> None:
        """What IAM shows for a deleted principal: ``deleted:<member>?uid=<uid>`` in every policy."""
        for policy in self._policies.values():
            for binding in policy["bindings"]:
                binding["members"] = [f"deleted:{m}?uid={uid}" if m == member else m for m in binding["members"]]


class GoogleCloudState:
    """Service accounts and policies, shared by the gRPC and REST faces."""

    def __init__(self, projects=("my-project",), quota: int = 100, buckets=(), project_numbers=None):
        self.projects = set(projects)
        self.project_numbers: dict[str, str] = dict(project_numbers or {})
        """Project id -> number, for Workload Identity Federation principals (GKE's pool of a
        project is ``<project>.svc.id.goog``, named by the project's number)."""
        for index, project in enumerate(sorted(self.projects)):
            self.project_numbers.setdefault(project, str(123456789012 + index))
        self.quota = quota
        self.accounts: dict[str, dict[str, Any]] = {}
        self.policies = _Policies()
        self.calls: list[str] = []
        self.fail_next_set_with_conflict = 0
        """Answer this many policy writes with a conflict, as a concurrent writer would cause."""
        self.buckets: dict[str, dict[str, Any]] = {}
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.managed_folders: dict[tuple[str, str], dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}
        self.activation_delay = 0.0
        """Seconds before a new ``roles/iam.workloadIdentityUser`` grant lets its Kubernetes
        ServiceAccount exchange its token for the Google account's (IAM policy changes take
        time to take effect); see :meth:`exchange_token`."""
        self.visibility_delay = 0.0
        """Seconds a new service account stays invisible to IAM policy writes, as Google's
        eventually consistent IAM shows it: ``setIamPolicy`` on it answers NOT_FOUND, and a
        policy naming it as a member answers 400 "... does not exist"."""
        self.throttle_share = 0.0
        """Answer this share of Cloud Storage and Resource Manager requests with 429."""
        self.throttled_count = 0
        self._lock = threading.RLock()
        self._ids = itertools.count(100000000000000000000)
        for bucket in buckets:
            self.add_bucket(bucket)

    def throttled(self) -> bool:
        """Whether to answer this REST request with 429 (a ``throttle_share`` of them)."""
        if self.throttle_share and random.random() < self.throttle_share:
            self.throttled_count += 1
            return True
        return False

    def add_bucket(self, name: str, project: str = "my-project", uniform_access: bool = True) -> None:
        """A bucket as an administrator made it (uniform bucket-level access on, by default)."""
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock:
            self.buckets.setdefault(name, {"project": project, "uniform_access": uniform_access, "created": created})

    def not_yet_visible(self, email: str) -> bool:
        account = self.accounts.get(email)
        return account is not None and time.monotonic() < account["_created"] + self.visibility_delay

    def member_problem(self, policy: dict[str, Any]) -> str | None:
        """Why IAM would refuse the members of *policy* (400), or None: a project service account
        it does not (yet) know, or a malformed principal or one of a pool that does not exist."""
        email = self.missing_member(policy)
        if email:
            return f"Service account {email} does not exist."
        for binding in policy.get("bindings", []):
            for member in binding.get("members", []):
                if member.startswith(("principal://", "principalSet://")):
                    match = _PRINCIPAL.fullmatch(member)
                    if not match:
                        return f"Invalid principal identifier: {member}"
                    project = next((p for p, n in self.project_numbers.items() if n == match["number"]), None)
                    if project is None or match["pool"] != f"{project}.svc.id.goog":
                        return f"Identity Pool does not exist (projects/{match['number']}/locations/global/workloadIdentityPools/{match['pool']})."
        return None

    def missing_member(self, policy: dict[str, Any]) -> str | None:
        """A project service account a policy names that IAM does not (yet) know, or None."""
        for binding in policy.get("bindings", []):
            for member in binding.get("members", []):
                email = member.removeprefix("serviceAccount:")
                if member.startswith("serviceAccount:") and email.endswith(".iam.gserviceaccount.com"):
                    project = email.split("@", 1)[1].split(".", 1)[0]
                    if project in self.projects and (email not in self.accounts or self.not_yet_visible(email)):
                        return email
        return None

    def exchange_token(self, member: str) -> str:
        """What GKE's metadata server gets for a pod whose Kubernetes ServiceAccount is *member*
        (``serviceAccount:<pool>[<ns>/<ksa>]``): a token for the Google account that grants it
        ``roles/iam.workloadIdentityUser``, once that grant is ``activation_delay`` old;
        otherwise PermissionError, as IAM's 403 on iam.serviceAccounts.getAccessToken."""
        with self._lock:
            now = time.monotonic()
            for email in self.accounts:
                for binding in self.policies.get(email)["bindings"]:
                    if binding["role"] == "roles/iam.workloadIdentityUser" and member in binding["members"]:
                        added = self.policies.added_at.get((email, binding["role"], member), 0.0)
                        if now >= added + self.activation_delay:
                            return self.access_token(email)
        raise PermissionError("Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).")

    def impersonate(self, member: str, email: str) -> str:
        """IAM Credentials' generateAccessToken for Google service account *email*, asked by
        *member* (``serviceAccount:<pool>[<ns>/<ksa>]``): a token only if *email*'s policy grants
        *member* ``roles/iam.workloadIdentityUser``; else PermissionError, as IAM's 403."""
        with self._lock:
            if email in self.accounts:
                for binding in self.policies.get(email)["bindings"]:
                    if binding["role"] == "roles/iam.workloadIdentityUser" and member in binding["members"]:
                        return self.access_token(email)
        raise PermissionError(f"Permission 'iam.serviceAccounts.getAccessToken' denied on resource "
                              f"'projects/-/serviceAccounts/{email}' (or it may not exist).")

    def access_token(self, email: str) -> str:
        """A token acting as Google service account *email*: what a pod gets from GKE's metadata
        server after the Workload Identity exchange. Storage requests with it are authorised by IAM."""
        with self._lock:
            if email not in self.accounts:
                raise LookupError(f"no such service account: {email}")
            token = "ya29.local-" + secrets.token_urlsafe(24)
            self.tokens[token] = f"serviceAccount:{email}"
            return token

    def federated_token(self, namespace: str, service_account: str, project: str = "my-project") -> str:
        """What GKE's metadata server gives a pod whose ServiceAccount has no Google account
        annotation: a federated token for the ServiceAccount's own principal in the project's
        pool. Storage requests with it are authorised for that principal."""
        with self._lock:
            number = self.project_numbers[project]
            member = (f"principal://iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/"
                      f"{project}.svc.id.goog/subject/ns/{namespace}/sa/{service_account}")
            token = "ya29.local-federated-" + secrets.token_urlsafe(24)
            self.tokens[token] = member
            return token

    def account_email(self, name: str) -> str:
        m = re.fullmatch(r"projects/([^/]+)/serviceAccounts/([^/]+)", name)
        if not m:
            raise LookupError(f"invalid service account name {name!r}")
        return m[2]


def _public(account: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in account.items() if not k.startswith("_")}


def _abort(context, code, message):
    context.abort(code, message)


class IAMAdminServicer:
    """The gRPC methods of ``google.iam.admin.v1.IAM`` this package uses."""

    def __init__(self, state: GoogleCloudState):
        self.state = state

    def _account(self, name: str, context) -> dict[str, Any]:
        try:
            email = self.state.account_email(name)
        except LookupError as e:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        account = self.state.accounts.get(email)
        if account is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"Unknown service account: {email}")
        return account

    def create(self, request: types.CreateServiceAccountRequest, context):
        state = self.state
        with state._lock:
            state.calls.append("CreateServiceAccount")
            project = request.name.removeprefix("projects/")
            if not request.name.startswith("projects/") or project not in state.projects:
                _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"Permission denied on resource project {project}.")
            if not _ACCOUNT_ID.fullmatch(request.account_id or ""):
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                       "Invalid form of account ID {}. Should be [Gaia ID |Email |Unique ID |] of the account".format(request.account_id))
            email = f"{request.account_id}@{project}.iam.gserviceaccount.com"
            if email in state.accounts:
                _abort(context, grpc.StatusCode.ALREADY_EXISTS, f"Service account {request.account_id} already exists within project projects/{project}.")
            if sum(1 for a in state.accounts.values() if a["project_id"] == project) >= state.quota:
                _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"Maximum number of service accounts on project reached: {state.quota}")
            sa = request.service_account
            if len(sa.display_name) > 100 or len(sa.description) > 256:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "display name or description too long")
            uid = str(next(state._ids))
            account = {
                "name": f"projects/{project}/serviceAccounts/{email}",
                "project_id": project,
                "unique_id": uid,
                "email": email,
                "display_name": sa.display_name,
                "description": sa.description,
                "oauth2_client_id": uid,
                "etag": b"MDEwMjE5MjA=",
            }
            state.accounts[email] = account
            account["_created"] = time.monotonic()
            return types.ServiceAccount(**_public(account))

    def get(self, request: types.GetServiceAccountRequest, context):
        with self.state._lock:
            self.state.calls.append("GetServiceAccount")
            return types.ServiceAccount(**_public(self._account(request.name, context)))

    def delete(self, request: types.DeleteServiceAccountRequest, context):
        with self.state._lock:
            self.state.calls.append("DeleteServiceAccount")
            account = self._account(request.name, context)
            del self.state.accounts[account["email"]]
            self.state.policies.drop(account["email"])
            self.state.policies.mark_deleted(f"serviceAccount:{account['email']}", account["unique_id"])
            return empty_pb2.Empty()

    def list(self, request: types.ListServiceAccountsRequest, context):
        """One page (20 by default, 100 at most, as Google's), ordered by e-mail; the page token
        is opaque to clients."""
        with self.state._lock:
            self.state.calls.append("ListServiceAccounts")
            project = request.name.removeprefix("projects/")
            if not request.name.startswith("projects/") or project not in self.state.projects:
                _abort(context, grpc.StatusCode.PERMISSION_DENIED, f"Permission denied on resource project {project}.")
            if request.page_size < 0:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "page_size must not be negative")
            size = min(request.page_size or 20, 100)
            try:
                start = int(request.page_token or 0)
            except ValueError:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "Invalid page token.")
            accounts = sorted((a for a in self.state.accounts.values() if a["project_id"] == project), key=lambda a: a["email"])
            page = accounts[start:start + size]
            token = str(start + size) if start + size < len(accounts) else ""
            return types.ListServiceAccountsResponse(accounts=[types.ServiceAccount(**_public(a)) for a in page],
                                                     next_page_token=token)

    def _visible_account(self, name: str, context) -> dict[str, Any]:
        account = self._account(name, context)
        if self.state.not_yet_visible(account["email"]):
            _abort(context, grpc.StatusCode.NOT_FOUND, f"Service account {name} does not exist.")
        return account

    def get_iam_policy(self, request: iam_policy_pb2.GetIamPolicyRequest, context):
        with self.state._lock:
            self.state.calls.append("GetIamPolicy")
            account = self._visible_account(request.resource, context)
            return _to_proto(self.state.policies.get(account["email"]))

    def set_iam_policy(self, request: iam_policy_pb2.SetIamPolicyRequest, context):
        with self.state._lock:
            self.state.calls.append("SetIamPolicy")
            account = self._visible_account(request.resource, context)
            if self.state.fail_next_set_with_conflict:
                self.state.fail_next_set_with_conflict -= 1
                self.state.policies.set(account["email"], self.state.policies.get(account["email"]))  # someone else wrote
            stored = self.state.policies.set(account["email"], _from_proto(request.policy))
            if stored is None:
                _abort(context, grpc.StatusCode.ABORTED,
                       "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.")
            return _to_proto(stored)

    def handler(self) -> grpc.GenericRpcHandler:
        def rpc(fn, request_type, response_serialize):
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=request_type, response_serializer=response_serialize)

        return grpc.method_handlers_generic_handler(
            "google.iam.admin.v1.IAM",
            {
                "CreateServiceAccount": rpc(self.create, types.CreateServiceAccountRequest.deserialize, types.ServiceAccount.serialize),
                "GetServiceAccount": rpc(self.get, types.GetServiceAccountRequest.deserialize, types.ServiceAccount.serialize),
                "ListServiceAccounts": rpc(self.list, types.ListServiceAccountsRequest.deserialize, types.ListServiceAccountsResponse.serialize),
                "DeleteServiceAccount": rpc(self.delete, types.DeleteServiceAccountRequest.deserialize, empty_pb2.Empty.SerializeToString),
                "GetIamPolicy": rpc(self.get_iam_policy, iam_policy_pb2.GetIamPolicyRequest.FromString, policy_pb2.Policy.SerializeToString),
                "SetIamPolicy": rpc(self.set_iam_policy, iam_policy_pb2.SetIamPolicyRequest.FromString, policy_pb2.Policy.SerializeToString),
            },
        )


def _to_proto(policy: dict[str, Any]) -> policy_pb2.Policy:
    bindings = []
    for b in policy["bindings"]:
        condition = b.get("condition")
        bindings.append(policy_pb2.Binding(
            role=b["role"], members=b["members"],
            condition=expr_pb2.Expr(**condition) if condition else None,
        ))
    return policy_pb2.Policy(version=policy["version"], etag=policy["etag"], bindings=bindings)


def _from_proto(policy: policy_pb2.Policy) -> dict[str, Any]:
    bindings = []
    for b in policy.bindings:
        item = {"role": b.role, "members": list(b.members)}
        if b.HasField("condition"):
            item["condition"] = {"title": b.condition.title, "description": b.condition.description, "expression": b.condition.expression}
        bindings.append(item)
    return {"version": policy.version, "etag": policy.etag, "bindings": bindings}


def _json_policy(policy: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**extra, "version": policy["version"], "etag": base64.b64encode(policy["etag"]).decode(), "bindings": policy["bindings"]}


def _from_json(body: dict[str, Any]) -> dict[str, Any]:
    etag = body.get("etag")
    return {
        "version": body.get("version", 1),
        "etag": base64.b64decode(etag) if etag else b"",
        "bindings": [dict(b) for b in body.get("bindings", [])],
    }


class RestFaces:
    """Resource Manager v3 and Cloud Storage over REST."""

    def __init__(self, state: GoogleCloudState):
        self.state = state

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(r"/v3/projects/{project}:getIamPolicy", self.project_get)
        app.router.add_post(r"/v3/projects/{project}:setIamPolicy", self.project_set)
        StorageFace(self.state).add_routes(app)
        return app

    def _error(self, code: int, status: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message, "status": status}}, status=code)

    async def project_get(self, request):
        project = request.match_info["project"]
        with self.state._lock:
            self.state.calls.append("projects.getIamPolicy")
            if self.state.throttled():
                return self._error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Read requests'.")
            if project not in self.state.projects:
                return self._error(403, "PERMISSION_DENIED", f"The caller does not have permission on projects/{project}")
            return web.json_response(_json_policy(self.state.policies.get(f"projects/{project}")))

    async def project_set(self, request):
        project = request.match_info["project"]
        body = await request.json()
        with self.state._lock:
            self.state.calls.append("projects.setIamPolicy")
            if self.state.throttled():
                return self._error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Write requests'.")
            if project not in self.state.projects:
                return self._error(403, "PERMISSION_DENIED", f"The caller does not have permission on projects/{project}")
            policy = _from_json(body.get("policy", {}))
            if any("condition" in b for b in policy["bindings"]) and policy["version"] != 3:
                return self._error(400, "INVALID_ARGUMENT", "Conditional bindings require policy version 3")
            for binding in policy["bindings"]:
                try:
                    if binding.get("condition"):
                        compile_condition(binding["condition"]["expression"])
                except ConditionError as e:
                    return self._error(400, "INVALID_ARGUMENT", str(e))
            problem = self.state.member_problem(policy)
            if problem:
                return self._error(400, "INVALID_ARGUMENT", problem)
            if self.state.fail_next_set_with_conflict:
                self.state.fail_next_set_with_conflict -= 1
                self.state.policies.set(f"projects/{project}", self.state.policies.get(f"projects/{project}"))
            stored = self.state.policies.set(f"projects/{project}", policy)
            if stored is None:
                return self._error(409, "ABORTED", "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.")
            return web.json_response(_json_policy(stored))


class GoogleTokenService:
    """Google's Security Token Service (``POST /v1/token``) and IAM Credentials
    (``POST /v1/projects/-/serviceAccounts/<email>:generateAccessToken``) for GKE's own Workload
    Identity, as a workload outside the cluster's nodes uses them (google-auth's external-account
    credential): the STS takes a Kubernetes ServiceAccount token for the cluster's pool
    (audience ``<project>.svc.id.goog``, signed by the cluster's issuer, not expired) with
    audience ``identitynamespace:<pool>:<cluster>``, and gives a federated token for the account's
    principal; IAM Credentials gives a Google service account's token to a federated token whose
    account that service account grants ``roles/iam.workloadIdentityUser``.

    *clusters* maps each cluster (``https://container.googleapis.com/v1/projects/...``) to a
    callable returning its issuer's URL and JWKS - what Google knows of a GKE cluster."""

    def __init__(self, state: GoogleCloudState, clusters: dict[str, Any]):
        self.state, self.clusters = state, clusters
        self.exchanges: list[str] = []
        """The principals the STS gave tokens for, in order."""
        self.url = ""

    def _verify(self, token: str, pool: str, cluster: str) -> dict[str, Any]:
        import jwt

        issuer, jwks = self.clusters[cluster]()
        header = jwt.get_unverified_header(token)
        keys = {k["kid"]: k for k in jwks["keys"]}
        if header.get("alg") != "RS256" or header.get("kid") not in keys:
            raise jwt.InvalidTokenError("the token is not signed by the cluster's key")
        key = jwt.PyJWK(keys[header["kid"]]).key
        return jwt.decode(token, key, algorithms=["RS256"], audience=pool, issuer=issuer,
                          options={"require": ["exp", "iat", "sub", "aud", "iss"]})

    def app(self) -> web.Application:
        def error(status: int, code: str, description: str) -> web.Response:
            return web.json_response({"error": code, "error_description": description}, status=status)

        async def token(request: web.Request) -> web.Response:
            import jwt

            form = await request.post()
            if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
                return error(400, "unsupported_grant_type", "Invalid value for grant_type.")
            if form.get("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token" or \
                    form.get("subject_token_type") not in ("urn:ietf:params:oauth:token-type:jwt",
                                                           "urn:ietf:params:oauth:token-type:id_token"):
                return error(400, "invalid_request", "Invalid value for requested_token_type or subject_token_type.")
            prefix, _, rest = str(form.get("audience", "")).partition(":")
            pool, _, cluster = rest.partition(":")
            if prefix != "identitynamespace" or cluster not in self.clusters or \
                    pool != f"{cluster.split('/projects/', 1)[1].split('/', 1)[0]}.svc.id.goog":
                return error(400, "invalid_target", "The target service indicated by the \"audience\" parameters is invalid.")
            try:
                claims = self._verify(str(form.get("subject_token", "")), pool, cluster)
                account = claims["kubernetes.io"]
                namespace, name = account["namespace"], account["serviceaccount"]["name"]
            except (jwt.InvalidTokenError, KeyError, TypeError) as e:
                return error(400, "invalid_grant", f"The subject token could not be verified: {e}.")
            if claims["sub"] != f"system:serviceaccount:{namespace}:{name}":
                return error(400, "invalid_grant", "The subject token's sub does not name its ServiceAccount.")
            issued = self.state.federated_token(namespace, name, pool.removesuffix(".svc.id.goog"))
            self.exchanges.append(self.state.tokens[issued])
            return web.json_response({"access_token": issued, "issued_token_type":
                                      "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer",
                                      "expires_in": 3600})

        async def generate(request: web.Request) -> web.Response:
            email, _, verb = request.match_info["name"].partition(":")
            if verb != "generateAccessToken":
                return error(404, "not_found", "Unknown method.")
            bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
            member = self.state.tokens.get(bearer, "")
            match = re.fullmatch(r"principal://iam\.googleapis\.com/projects/[0-9]+/locations/global/workloadIdentityPools/"
                                 r"(?P<pool>[^/]+)/subject/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)", member)
            if match is None:
                return web.json_response({"error": {"code": 401, "status": "UNAUTHENTICATED",
                                                    "message": "Request had invalid authentication credentials."}}, status=401)
            try:
                issued = self.state.impersonate(f"serviceAccount:{match['pool']}[{match['ns']}/{match['sa']}]", email)
            except PermissionError as e:
                return web.json_response({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": str(e)}}, status=403)
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
            return web.json_response({"accessToken": issued, "expireTime": expires})

        app = web.Application()
        app.router.add_post("/v1/token", token)
        app.router.add_post("/v1/projects/-/serviceAccounts/{name}", generate)
        return app


class GoogleCloudServer:
    """Serve :class:`GoogleCloudState` on 127.0.0.1: gRPC for IAM Admin, HTTP for the rest."""

    def __init__(self, state: GoogleCloudState | None = None):
        self.state = state or GoogleCloudState()
        self.grpc_target = ""
        self.rest_url = ""
        self._grpc: grpc.Server | None = None
        self._rest = None

    def start(self) -> GoogleCloudServer:
        from .kubernetes import KubernetesAPIServer

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._grpc.add_generic_rpc_handlers((IAMAdminServicer(self.state).handler(),))
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self.grpc_target = f"127.0.0.1:{port}"
        self._rest = KubernetesAPIServer(api=_AppProvider(RestFaces(self.state)))
        self._rest.start()
        self.rest_url = self._rest.url
        return self

    def stop(self) -> None:
        if self._grpc:
            self._grpc.stop(0)
        if self._rest:
            self._rest.stop()

    def client_factory(self):
        """A plain function returning :meth:`clients`, for ``c.CloudIdentity.gcp_client_factory``
        (a function, not a bound method: traitlets deep-copies config values)."""
        if not hasattr(self, "_factory"):
            self._factory = client_factory_for(self.grpc_target, self.rest_url)
        return self._factory

    def clients(self):
        """Real client libraries pointed at this server: (IAMClient, ProjectsClient, storage.Client)."""
        return clients_for(self.grpc_target, self.rest_url)


def clients_for(grpc_target: str, rest_url: str, project: str = "my-project"):
    """Real client libraries pointed at a local server: (IAMClient, ProjectsClient, storage.Client)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import iam_admin_v1, resourcemanager_v3, storage
    from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport

    iam = iam_admin_v1.IAMClient(transport=IAMGrpcTransport(channel=grpc.insecure_channel(grpc_target)))
    projects = resourcemanager_v3.ProjectsClient(
        credentials=AnonymousCredentials(), transport="rest", client_options={"api_endpoint": rest_url}
    )
    buckets = storage.Client(project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": rest_url})
    return iam, projects, buckets


def client_factory_for(grpc_target: str, rest_url: str):
    """``c.CloudIdentity.gcp_client_factory`` for a local server another process runs (the demo's hub)."""
    def factory():
        return clients_for(grpc_target, rest_url)

    return factory


class _AppProvider:
    """Lets the REST faces reuse the threaded aiohttp runner of the Kubernetes emulator."""

    def __init__(self, faces: RestFaces):
        self.faces = faces

    def app(self) -> web.Application:
        return self.faces.app()
