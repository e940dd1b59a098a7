"""A strict local EKS Pod Identity API for tests and benchmarks (moto has none).

Serves, over HTTP on 127.0.0.1, the five calls the hub makes - Create, Describe, Update,
Delete and List Pod Identity associations - in EKS's own REST-JSON protocol, so the real
boto3 EKS client talks to it unchanged. Every request is checked against botocore's own
service model (required members, types, lengths, ranges) before anything else, and refused
as EKS refuses it, with EKS's error shapes:

* ``InvalidParameterException`` (400): the model's constraints; a namespace or ServiceAccount
  name Kubernetes would not accept; a role ARN that is not one; a session policy that is not
  JSON or longer than 2,048 characters, or given with session tags left on; ``aws:`` tag keys;
* ``ResourceNotFoundException`` (404): an unknown cluster or association id;
* ``ResourceInUseException`` (409): a second association for the same ServiceAccount;
* ``ResourceLimitExceededException`` (400): past ``association_limit`` (5,000, as EKS);
* ``ThrottlingException`` (429): a ``throttle_share`` of calls, when switched on.

``clientRequestToken`` is idempotent as in EKS: a create repeated with the same token and
the same parameters answers with the association it made. Not modelled: IAM checks (the
role's existence, ``iam:PassRole``), ``targetRoleArn`` role chaining, and the EKS Auth API the
node agent calls (:meth:`EKSPodIdentity.association_for` answers what it would look up).
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import re
import secrets
import threading
import time
from typing import Any

import botocore.session
from aiohttp import web
from botocore.validate import ParamValidator

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\x21-\x7e]{1,576}")
SESSION_POLICY_LIMIT = 2048

ROUTES = {
    "CreatePodIdentityAssociation": ("POST", "/clusters/{name}/pod-identity-associations"),
    "ListPodIdentityAssociations": ("GET", "/clusters/{name}/pod-identity-associations"),
    "DescribePodIdentityAssociation": ("GET", "/clusters/{name}/pod-identity-associations/{associationId}"),
    "UpdatePodIdentityAssociation": ("POST", "/clusters/{name}/pod-identity-associations/{associationId}"),
    "DeletePodIdentityAssociation": ("DELETE", "/clusters/{name}/pod-identity-associations/{associationId}"),
}


class EKSError(Exception):
    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class EKSPodIdentity:
    """The associations of some clusters, and the HTTP face that serves them."""

    def __init__(self, clusters=("escape-eks",), account: str = "123456789012", region: str = "eu-west-1",
                 association_limit: int = 5000):
        self.model = botocore.session.get_session().get_service_model("eks")
        self.clusters = set(clusters)
        self.account, self.region = account, region
        self.association_limit = association_limit
        self.associations: dict[str, dict[str, Any]] = {}
        self._by_account: dict[tuple[str, str, str], str] = {}
        self._per_cluster: collections.Counter[str] = collections.Counter()
        self._tokens: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self.throttle_share = 0.0
        """Answer this share of calls with 429 ThrottlingException (0 = never)."""
        self.delay = 0.0
        """Seconds each call takes (as a remote API would)."""
        self.calls: collections.Counter[str] = collections.Counter()
        self.throttled = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    # -- what the node's Pod Identity agent would learn from EKS Auth --------------------

    def association_for(self, cluster: str, namespace: str, service_account: str) -> dict[str, Any] | None:
        with self._lock:
            key = self._by_account.get((cluster, namespace, service_account))
            return None if key is None else dict(self.associations[key])

    # -- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        for operation, (method, path) in ROUTES.items():
            app.router.add_route(method, path, self._handler(operation))
        return app

    def _handler(self, operation: str):
        async def handle(request: web.Request) -> web.Response:
            self.calls[operation] += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.throttle_share and random.random() < self.throttle_share:
                    self.throttled += 1
                    raise EKSError("ThrottlingException", "Rate exceeded", 429)
                params = await self._params(operation, request)
                with self._lock:
                    body = getattr(self, "_" + operation)(params)
                return web.json_response(body, dumps=lambda v: json.dumps(v, default=str))
            except EKSError as e:
                status = e.status or self.model.shape_for(e.code).metadata["error"]["httpStatusCode"]
                return web.json_response({"message": e.message}, status=status, headers={"x-amzn-ErrorType": e.code})
            finally:
                self.in_flight -= 1

        return handle

    async def _params(self, operation: str, request: web.Request) -> dict[str, Any]:
        """The request as the operation's input members, validated against botocore's model."""
        shape = self.model.operation_model(operation).input_shape
        params: dict[str, Any] = {}
        body = {}
        if request.can_read_body:
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                raise EKSError("InvalidParameterException", "The request body is not valid JSON.") from None
        for name, member in shape.members.items():
            location = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if location == "uri":
                params[name] = request.match_info[wire]
            elif location == "querystring":
                if wire in request.query:
                    value = request.query[wire]
                    params[name] = int(value) if member.type_name == "integer" and value.lstrip("-").isdigit() else value
            elif name in body:
                params[name] = body[name]
        unknown = sorted(set(body) - set(shape.members))
        if unknown:
            raise EKSError("InvalidParameterException", f"Unknown parameter in request: {unknown[0]}")
        report = ParamValidator().validate(params, shape)
        if report.has_errors():
            raise EKSError("InvalidParameterException", report.generate_report())
        if params["clusterName"] not in self.clusters:
            raise EKSError("ResourceNotFoundException", f"No cluster found for name: {params['clusterName']}.")
        return params

    # -- the operations (called with the lock held) ------------------------------------

    def _check_settings(self, params: dict[str, Any], current: dict[str, Any] | None = None) -> None:
        if "roleArn" in params and not _ROLE_ARN.fullmatch(params["roleArn"]):
            raise EKSError("InvalidParameterException", f"Invalid IAM role ARN: {params['roleArn']}")
        policy = params.get("policy", (current or {}).get("policy"))
        disabled = params.get("disableSessionTags", (current or {}).get("disableSessionTags", False))
        if policy:
            if len(policy) > SESSION_POLICY_LIMIT:
                raise EKSError("InvalidParameterException",
                               f"The policy exceeds the maximum length of {SESSION_POLICY_LIMIT} characters.")
            try:
                document = json.loads(policy)
            except ValueError:
                raise EKSError("InvalidParameterException", "The policy is not valid JSON.") from None
            if not isinstance(document, dict) or "Statement" not in document:
                raise EKSError("InvalidParameterException", "The policy is not a valid IAM policy document.")
            if not disabled:
                raise EKSError("InvalidParameterException",
                               "A session policy requires disableSessionTags to be true (session tags and the policy "
                               "together exceed the packed policy size).")

    def _CreatePodIdentityAssociation(self, params: dict[str, Any]) -> dict[str, Any]:
        cluster, namespace, account = params["clusterName"], params["namespace"], params["serviceAccount"]
        token = params.get("clientRequestToken")
        if token and token in self._tokens:
            previous_id, fingerprint = self._tokens[token]
            if fingerprint != json.dumps(params, sort_keys=True) or previous_id not in self.associations:
                raise EKSError("InvalidRequestException", "The client request token was used with different parameters.")
            return {"association": self.associations[previous_id]}
        if not _DNS_SUBDOMAIN.fullmatch(namespace) or len(namespace) > 63:
            raise EKSError("InvalidParameterException", f"Invalid namespace: {namespace}")
        if not _DNS_SUBDOMAIN.fullmatch(account) or len(account) > 253:
            raise EKSError("InvalidParameterException", f"Invalid service account name: {account}")
        for key in params.get("tags", {}):
            if key.lower().startswith("aws:"):
                raise EKSError("InvalidParameterException", f"Tag keys starting with 'aws:' are reserved: {key}")
        self._check_settings(params)
        existing = self._by_account.get((cluster, namespace, account))
        if existing:
            raise EKSError("ResourceInUseException", f"Association already exists: {existing}")
        if self._per_cluster[cluster] >= self.association_limit:
            raise EKSError("ResourceLimitExceededException",
                           f"Pod Identity associations for cluster {cluster} have reached the limit of {self.association_limit}.")
        association_id = "a-" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(17))
        now = time.time()
        association = {
            "clusterName": cluster,
            "namespace": namespace,
            "serviceAccount": account,
            "roleArn": params["roleArn"],
            "associationArn": f"arn:aws:eks:{self.region}:{self.account}:podidentityassociation/{cluster}/{association_id}",
            "associationId": association_id,
            "tags": dict(params.get("tags", {})),
            "createdAt": now,
            "modifiedAt": now,
            "disableSessionTags": bool(params.get("disableSessionTags", False)),
        }
        if params.get("policy"):
            association["policy"] = params["policy"]
        self.associations[association_id] = association
        self._by_account[(cluster, namespace, account)] = association_id
        self._per_cluster[cluster] += 1
        if token:
            self._tokens[token] = (association_id, json.dumps(params, sort_keys=True))
        return {"association": association}

    def _found(self, params: dict[str, Any]) -> dict[str, Any]:
        association = self.associations.get(params["associationId"])
        if association is None or association["clusterName"] != params["clusterName"]:
            raise EKSError("ResourceNotFoundException",
                           f"No Pod Identity Association found for id: {params['associationId']}.")
        return association

    def _DescribePodIdentityAssociation(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"association": self._found(params)}

    def _UpdatePodIdentityAssociation(self, params: dict[str, Any]) -> dict[str, Any]:
        association = self._found(params)
        self._check_settings(params, association)
        if "roleArn" in params:
            association["roleArn"] = params["roleArn"]
        if "disableSessionTags" in params:
            association["disableSessionTags"] = params["disableSessionTags"]
        if "policy" in params:
            if params["policy"]:
                association["policy"] = params["policy"]
            else:
                association.pop("policy", None)  # the empty string removes it
        association["modifiedAt"] = time.time()
        return {"association": association}

    def _DeletePodIdentityAssociation(self, params: dict[str, Any]) -> dict[str, Any]:
        association = self._found(params)
        del self.associations[association["associationId"]]
        del self._by_account[(association["clusterName"], association["namespace"], association["serviceAccount"])]
        self._per_cluster[association["clusterName"]] -= 1
        return {"association": association}

    def _ListPodIdentityAssociations(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("namespace") and params.get("serviceAccount"):  # one account: indexed, as EKS would
            key = self._by_account.get((params["clusterName"], params["namespace"], params["serviceAccount"]))
            found = [] if key is None else [self.associations[key]]
        else:
            found = [a for a in self.associations.values() if a["clusterName"] == params["clusterName"]
                     and params.get("namespace") in (None, a["namespace"])
                     and params.get("serviceAccount") in (None, a["serviceAccount"])]
        found.sort(key=lambda a: a["associationId"])
        start = int(params.get("nextToken") or 0)
        size = params.get("maxResults", 100)
        page = found[start:start + size]
        keys = ("clusterName", "namespace", "serviceAccount", "associationArn", "associationId")
        answer: dict[str, Any] = {"associations": [{k: a[k] for k in keys} for a in page]}
        if start + size < len(found):
            answer["nextToken"] = str(start + size)
        return answer
