"""A strict local Azure Resource Manager for tests and the demo: managed identities, their
federated credentials, role definitions and role assignments.

Serves, over HTTP on 127.0.0.1, the ARM REST calls ``azure-mgmt-msi`` (api-version
2024-11-30) and ``azure-mgmt-authorization`` (2022-04-01) make, so the real SDK clients talk
to it unchanged (:meth:`AzureResourceManager.client_factory`). It refuses what ARM refuses,
with ARM's error shape ``{"error": {"code", "message"}}``:

* 401 ``AuthenticationFailed`` without a bearer token; 400 ``InvalidApiVersionParameter`` for
  another api-version; 404 ``SubscriptionNotFound`` / ``ResourceGroupNotFound`` /
  ``ResourceNotFound``; 400 ``InvalidResourceName`` (identity names: 3-128 of
  ``[A-Za-z0-9_-]``, starting alphanumerically; credential names: 3-120), ``LocationRequired``,
  ``InvalidTag``;
* federated credentials: issuer, subject and audiences required (400 ``BadRequest``), the
  issuer an https URL, one issuer/subject pair per identity (400), at most 20 per identity
  (400), and **409** ``ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity``
  when a credential of the same identity is being written at the same time (each write takes
  ``write_seconds``, as ARM's do);
* role assignments: the name a GUID (400 ``InvalidRoleAssignmentId``), a known role
  definition (400 ``RoleDefinitionDoesNotExist``), an existing principal (400
  ``PrincipalNotFound``), and 409 ``RoleAssignmentExists`` for the same scope, role and
  principal, or ``RoleAssignmentUpdateNotPermitted`` for a changed one;
* 429 ``TooManyRequests`` for a ``throttle_share`` of calls, when switched on.

Deleting an identity deletes its credentials and leaves its role assignments (as Azure does).
Ids in answers spell ``resourcegroups`` in lower case, as ARM does for managed identities.
``replication_seconds`` makes a new identity's principal unknown to role assignments for a while
(``PrincipalNotFound``, as while Entra replicates it).
Not modelled: whether a role assignment's scope exists, RBAC on the caller, other resource
providers, long-running operations (these calls have none), the token exchange of Microsoft
Entra (see :meth:`AzureResourceManager.exchange` for the demo).
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import random
import re
import time
import uuid
from typing import Any
from urllib.parse import urlparse

from aiohttp import web

MSI_VERSION = "2024-11-30"
AUTHORIZATION_VERSION = "2022-04-01"
_IDENTITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,127}")
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,119}")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
MSI_PATH = "/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.ManagedIdentity/userAssignedIdentities"
BUILT_IN_ROLES = {
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
}


class ARMError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class AzureResourceManager:
    """Subscriptions with resource groups, their managed identities and role assignments."""

    def __init__(self, subscriptions: dict[str, tuple[str, ...]], tenant_id: str = "72f988bf-86f1-41af-91ab-2d7cd011db47",
                 roles: dict[str, str] | None = None):
        self.groups = {sub.lower(): {g.lower() for g in groups} for sub, groups in subscriptions.items()}
        self.tenant_id = tenant_id
        self.roles = dict(roles or BUILT_IN_ROLES)
        self.identities: dict[str, dict[str, Any]] = {}
        self.credentials: dict[str, dict[str, dict[str, Any]]] = {}
        self.assignments: dict[str, dict[str, Any]] = {}
        self.writing: set[str] = set()
        self.write_seconds = 0.02
        self.replication_seconds = 0.0
        """A new identity's principal is unknown to role assignments for this long (Entra replication)."""
        self._visible_after: dict[str, float] = {}
        self.throttle_share = 0.0
        self.page_size = 100
        self.calls: collections.Counter[str] = collections.Counter()
        self.conflicts = 0

    # -- HTTP -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        base = MSI_PATH
        r.add_get(base, self._handler("ListIdentities", self._list_identities, MSI_VERSION))
        r.add_route("*", base + "/{name}", self._handler("Identity", self._identity, MSI_VERSION))
        r.add_get(base + "/{name}/federatedIdentityCredentials",
                  self._handler("ListFederatedCredentials", self._list_credentials, MSI_VERSION))
        r.add_route("*", base + "/{name}/federatedIdentityCredentials/{credential}",
                    self._handler("FederatedCredential", self._credential, MSI_VERSION))
        r.add_get("/{scope:.*}/providers/Microsoft.Authorization/roleDefinitions",
                  self._handler("ListRoleDefinitions", self._role_definitions, AUTHORIZATION_VERSION))
        r.add_get("/{scope:.*}/providers/Microsoft.Authorization/roleAssignments",
                  self._handler("ListRoleAssignments", self._list_assignments, AUTHORIZATION_VERSION))
        r.add_route("*", "/{scope:.*}/providers/Microsoft.Authorization/roleAssignments/{name}",
                    self._handler("RoleAssignment", self._assignment, AUTHORIZATION_VERSION))
        return app

    def _handler(self, name: str, fn: Any, version: str):
        async def handle(request: web.Request) -> web.Response:
            self.calls[f"{request.method} {name}"] += 1
            try:
                if not request.headers.get("Authorization", "").startswith("Bearer "):
                    raise ARMError(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
                if request.query.get("api-version") != version:
                    raise ARMError(400, "InvalidApiVersionParameter",
                                   f"The api-version '{request.query.get('api-version')}' is invalid. The supported versions are '{version}'.")
                if self.throttle_share and random.random() < self.throttle_share:
                    raise ARMError(429, "TooManyRequests", "The request is being throttled.")
                body = None
                if request.method in ("PUT", "PATCH"):
                    try:
                        body = json.loads(await request.read() or b"null")
                    except ValueError:
                        raise ARMError(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized.") from None
                    if not isinstance(body, dict):
                        raise ARMError(400, "InvalidRequestContent", "The request content must be a JSON object.")
                status, answer = await fn(request, body)
            except ARMError as e:
                if e.status == 409:
                    self.conflicts += 1
                headers = {"Retry-After": "1"} if e.status == 429 else {}
                return web.json_response({"error": {"code": e.code, "message": e.message}}, status=e.status, headers=headers)
            if answer is None:
                return web.Response(status=status)
            return web.json_response(answer, status=status)

        return handle

    def _group(self, request: web.Request) -> tuple[str, str]:
        sub, group = request.match_info["sub"], request.match_info["group"]
        if sub.lower() not in self.groups:
            raise ARMError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
        if group.lower() not in self.groups[sub.lower()]:
            raise ARMError(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
        return sub, group

    def _identity_id(self, request: web.Request) -> tuple[str, dict[str, Any] | None]:
        """The identity's id as ARM writes it in answers ("resourcegroups" in lower case, as real
        ARM does for managed identities), and the identity, if it exists."""
        sub, group = self._group(request)
        name = request.match_info["name"]
        resource_id = MSI_PATH.format(sub=sub, group=group).replace("/resourceGroups/", "/resourcegroups/") + "/" + name
        return resource_id, self.identities.get(resource_id.lower())

    # -- managed identities ----------------------------------------------------------------

    async def _identity(self, request: web.Request, body: Any) -> tuple[int, Any]:
        resource_id, current = self._identity_id(request)
        name = request.match_info["name"]
        if request.method == "GET":
            if current is None:
                raise ARMError(404, "ResourceNotFound", f"The Resource 'Microsoft.ManagedIdentity/userAssignedIdentities/{name}' "
                                                       f"under resource group '{request.match_info['group']}' was not found.")
            return 200, current
        if request.method == "DELETE":
            if current is None:
                return 204, None
            del self.identities[resource_id.lower()]
            self.credentials.pop(resource_id.lower(), None)
            return 200, None
        if request.method != "PUT":
            raise ARMError(405, "MethodNotAllowed", f"{request.method} is not supported here.")
        if not _IDENTITY_NAME.fullmatch(name):
            raise ARMError(400, "InvalidResourceName", f"Resource name {name} is invalid. The name can be 3-128 characters "
                                                       "long, must begin with a letter or number, and may contain letters, numbers, underscores and hyphens.")
        location = body.get("location")
        if not isinstance(location, str) or not location:
            raise ARMError(400, "LocationRequired", "The location property is required for this definition.")
        tags = body.get("tags") or {}
        if not isinstance(tags, dict) or len(tags) > 50 or any(
                not isinstance(v, str) or len(k) > 512 or len(v) > 256 or re.search(r"[<>%&\\?/]", k) for k, v in tags.items()):
            raise ARMError(400, "InvalidTag", "The tags are invalid: at most 50, names up to 512 characters without "
                                              "<>%&\\?/, values up to 256 characters.")
        if current is not None:
            if current["location"] != location.lower().replace(" ", ""):
                raise ARMError(400, "InvalidResourceLocation", f"The resource '{name}' already exists in location "
                                                               f"'{current['location']}'; it cannot be moved to '{location}'.")
            current["tags"] = dict(tags)
            return 200, current
        principal = str(uuid.uuid4())
        identity = {
            "id": resource_id, "name": name, "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
            "location": location.lower().replace(" ", ""), "tags": dict(tags),
            "properties": {"tenantId": self.tenant_id, "principalId": principal, "clientId": str(uuid.uuid4())},
            "systemData": {"createdAt": datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")},
        }
        self._visible_after[principal] = time.monotonic() + self.replication_seconds
        self.identities[resource_id.lower()] = identity
        return 201, identity

    async def _list_identities(self, request: web.Request, body: Any) -> tuple[int, Any]:
        sub, group = self._group(request)
        prefix = MSI_PATH.format(sub=sub, group=group).lower() + "/"
        found = sorted((i for key, i in self.identities.items() if key.startswith(prefix)), key=lambda i: i["id"].lower())
        return 200, self._page(request, found)

    def _page(self, request: web.Request, items: list[Any]) -> dict[str, Any]:
        start = int(request.query.get("$skiptoken") or 0)
        page: dict[str, Any] = {"value": items[start:start + self.page_size]}
        if start + self.page_size < len(items):
            page["nextLink"] = str(request.url.update_query({"$skiptoken": str(start + self.page_size)}))
        return page

    # -- federated identity credentials ----------------------------------------------------

    def _parent(self, request: web.Request) -> tuple[str, dict[str, Any]]:
        resource_id, identity = self._identity_id(request)
        if identity is None:
            raise ARMError(404, "ParentResourceNotFound", f"Can not perform requested operation on nested resource. Parent "
                                                          f"resource '{request.match_info['name']}' not found.")
        return resource_id.lower(), identity

    async def _list_credentials(self, request: web.Request, body: Any) -> tuple[int, Any]:
        key, _ = self._parent(request)
        found = sorted(self.credentials.get(key, {}).values(), key=lambda c: c["name"].lower())
        return 200, self._page(request, found)

    async def _credential(self, request: web.Request, body: Any) -> tuple[int, Any]:
        key, identity = self._parent(request)
        name = request.match_info["credential"]
        existing = self.credentials.setdefault(key, {})
        current = existing.get(name.lower())
        if request.method == "GET":
            if current is None:
                raise ARMError(404, "NotFound", f"Federated Identity Credential '{name}' was not found.")
            return 200, current
        if request.method not in ("PUT", "DELETE"):
            raise ARMError(405, "MethodNotAllowed", f"{request.method} is not supported here.")
        if key in self.writing:
            raise ARMError(409, "ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity",
                           f"Too many Federated Identity Credentials are written concurrently for the managed identity "
                           f"'{identity['id'].lower()}'. Concurrent Federated Identity Credentials writes under the same "
                           "managed identity are not supported.")
        self.writing.add(key)
        try:
            await asyncio.sleep(self.write_seconds)
            if request.method == "DELETE":
                if current is None:
                    return 204, None
                del existing[name.lower()]
                return 200, None
            return self._write_credential(identity, existing, name, current, body)
        finally:
            self.writing.discard(key)

    def _write_credential(self, identity: dict[str, Any], existing: dict[str, dict[str, Any]], name: str,
                          current: dict[str, Any] | None, body: dict[str, Any]) -> tuple[int, Any]:
        if not _CREDENTIAL_NAME.fullmatch(name):
            raise ARMError(400, "InvalidResourceName", f"Federated Identity Credential name '{name}' is invalid: 3-120 "
                                                       "characters, letters, numbers, '-' and '_', starting with a letter or number.")
        props = body.get("properties") or {}
        issuer, subject, audiences = props.get("issuer"), props.get("subject"), props.get("audiences")
        if not issuer or not subject or not audiences:
            raise ARMError(400, "BadRequest", "The request format was unexpected. Federated Identity Credential must "
                                              "specify 'issuer', 'subject' and 'audience'.")
        parsed = urlparse(issuer)
        if parsed.scheme != "https" or not parsed.netloc:
            raise ARMError(400, "BadRequest", f"Issuer '{issuer}' is not a valid https URL.")
        if not isinstance(audiences, list) or len(audiences) != 1 or not all(isinstance(a, str) and a for a in audiences):
            raise ARMError(400, "BadRequest", "Exactly one audience is supported.")
        if any((c["properties"]["issuer"], c["properties"]["subject"]) == (issuer, subject)
               for key, c in existing.items() if key != name.lower()):
            raise ARMError(400, "BadRequest", "Issuer and subject combination already exists for this Managed Identity.")
        if current is None and len(existing) >= 20:
            raise ARMError(400, "BadRequest", "A maximum of 20 Federated Identity Credentials can be added to a managed identity.")
        credential = {
            "id": f"{identity['id']}/federatedIdentityCredentials/{name}", "name": name,
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            "properties": {"issuer": issuer, "subject": subject, "audiences": list(audiences)},
        }
        existing[name.lower()] = credential
        return (200 if current is not None else 201), credential

    # -- role definitions and assignments --------------------------------------------------

    def _scope(self, request: web.Request) -> str:
        scope = "/" + request.match_info["scope"].strip("/")
        parts = scope.split("/")
        if len(parts) < 3 or parts[1].lower() != "subscriptions" or parts[2].lower() not in self.groups:
            raise ARMError(404, "SubscriptionNotFound", f"The subscription for scope '{scope}' could not be found.")
        return scope

    def _role_id(self, scope: str, guid: str) -> str:
        return f"/subscriptions/{scope.split('/')[2]}/providers/Microsoft.Authorization/roleDefinitions/{guid}"

    async def _role_definitions(self, request: web.Request, body: Any) -> tuple[int, Any]:
        scope = self._scope(request)
        wanted = re.fullmatch(r"roleName eq '(.*)'", request.query.get("$filter", ""))
        found = [{"id": self._role_id(scope, guid), "name": guid, "type": "Microsoft.Authorization/roleDefinitions",
                  "properties": {"roleName": role, "type": "BuiltInRole", "assignableScopes": ["/"]}}
                 for role, guid in self.roles.items() if wanted is None or wanted[1] == role]
        return 200, {"value": found}

    async def _list_assignments(self, request: web.Request, body: Any) -> tuple[int, Any]:
        scope = self._scope(request)
        principal = re.fullmatch(r"principalId eq '(.*)'", request.query.get("$filter", ""))
        if principal is None:
            found = [a for a in self.assignments.values() if a["properties"]["scope"].lower() == scope.lower()]
        else:  # a principal's assignments at, above or below the scope
            here = scope.lower().rstrip("/") + "/"
            found = [a for a in self.assignments.values() if a["properties"]["principalId"] == principal[1]
                     and (here.startswith(a["properties"]["scope"].lower().rstrip("/") + "/")
                          or (a["properties"]["scope"].lower().rstrip("/") + "/").startswith(here))]
        return 200, {"value": found}

    async def _assignment(self, request: web.Request, body: Any) -> tuple[int, Any]:
        scope, name = self._scope(request), request.match_info["name"]
        key = f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}".lower()
        current = self.assignments.get(key)
        if request.method == "GET":
            if current is None:
                raise ARMError(404, "RoleAssignmentNotFound", "The role assignment does not exist.")
            return 200, current
        if request.method == "DELETE":
            if current is None:
                return 204, None
            return 200, self.assignments.pop(key)
        if request.method != "PUT":
            raise ARMError(405, "MethodNotAllowed", f"{request.method} is not supported here.")
        if not _GUID.fullmatch(name):
            raise ARMError(400, "InvalidRoleAssignmentId", f"The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID.")
        props = body.get("properties") or {}
        role, principal = props.get("roleDefinitionId", ""), props.get("principalId", "")
        known = {self._role_id(scope, guid).lower() for guid in self.roles.values()}
        if role.lower() not in known:
            raise ARMError(400, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{role.rsplit('/', 1)[-1]}' does not exist.")
        if not any(i["properties"]["principalId"] == principal for i in self.identities.values()) or \
                time.monotonic() < self._visible_after.get(principal, 0.0):
            raise ARMError(400, "PrincipalNotFound", f"Principal {principal} does not exist in the directory {self.tenant_id}. "
                                                     "Check that you have the correct principal ID.")
        if current is not None:
            same = (current["properties"]["roleDefinitionId"].lower(), current["properties"]["principalId"]) == (role.lower(), principal)
            raise ARMError(409, "RoleAssignmentExists" if same else "RoleAssignmentUpdateNotPermitted",
                           "The role assignment already exists." if same else
                           "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.")
        if any(a["properties"]["scope"].lower() == scope.lower() and a["properties"]["principalId"] == principal
               and a["properties"]["roleDefinitionId"].lower() == role.lower() for a in self.assignments.values()):
            raise ARMError(409, "RoleAssignmentExists", "The role assignment already exists.")
        assignment = {
            "id": f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}", "name": name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {"roleDefinitionId": role, "principalId": principal,
                           "principalType": props.get("principalType", "ServicePrincipal"), "scope": scope},
        }
        self.assignments[key] = assignment
        return 201, assignment

    # -- what tests ask ----------------------------------------------------------------------

    def identity(self, resource_id: str) -> dict[str, Any] | None:
        return self.identities.get(resource_id.lower())

    def credentials_of(self, resource_id: str) -> list[dict[str, Any]]:
        return list(self.credentials.get(resource_id.lower(), {}).values())

    def assignments_of(self, principal_id: str) -> list[dict[str, Any]]:
        return [a for a in self.assignments.values() if a["properties"]["principalId"] == principal_id]

    @staticmethod
    def client_factory(url: str, token: str = "local-token"):
        """A plain function (subscription id) -> (ManagedServiceIdentityClient,
        AuthorizationManagementClient): the real SDK clients, sending to *url* with a fixed
        bearer token (azure-core refuses bearer tokens over http, so the header is set directly)."""
        def factory(subscription: str):
            from azure.core.pipeline.policies import HeadersPolicy
            from azure.mgmt.authorization import AuthorizationManagementClient
            from azure.mgmt.msi import ManagedServiceIdentityClient

            class NoCredential:
                def get_token(self, *scopes: str, **kwargs: Any) -> Any:
                    raise AssertionError("the local ARM server is reached with a fixed token")

            options = {"base_url": url, "retry_total": 0,
                       "authentication_policy": HeadersPolicy({"Authorization": f"Bearer {token}"})}
            return (ManagedServiceIdentityClient(NoCredential(), subscription, **options),
                    AuthorizationManagementClient(NoCredential(), subscription, **options))

        return factory


class EntraTokenEndpoint:
    """Microsoft Entra's token endpoint for workload identities, as far as the demo needs it:
    the client-credentials grant with a projected ServiceAccount token as client assertion.

    A token (what the kubelet projects into a pod: :meth:`register`) names one ServiceAccount;
    the exchange succeeds only if the managed identity with the requested client id has a
    federated credential for exactly that account, the demo cluster's issuer and audience
    ``api://AzureADTokenExchange`` (AADSTS70021 otherwise, as Entra answers)."""

    def __init__(self, arm: AzureResourceManager, issuer: str):
        self.arm, self.issuer = arm, issuer
        self._tokens: dict[str, str] = {}
        self.issued: list[dict[str, str]] = []

    def register(self, namespace: str, service_account: str) -> str:
        token = "demo-azure-projected-" + uuid.uuid4().hex
        self._tokens[token] = f"system:serviceaccount:{namespace}:{service_account}"
        return token

    def app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            form = await request.post()
            subject = self._tokens.get(str(form.get("client_assertion", "")))
            if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != \
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" or subject is None:
                return web.json_response({"error": "invalid_request", "error_description": "AADSTS50027: Invalid JWT token."}, status=400)
            identity = next((i for i in self.arm.identities.values() if i["properties"]["clientId"] == form.get("client_id")), None)
            trusted = identity is not None and any(
                (c["properties"]["issuer"], c["properties"]["subject"]) == (self.issuer, subject)
                and "api://AzureADTokenExchange" in c["properties"]["audiences"]
                for c in self.arm.credentials_of(identity["id"]))
            if not trusted or request.match_info["tenant"] != self.arm.tenant_id:
                return web.json_response({"error": "invalid_client", "error_description":
                                          f"AADSTS70021: No matching federated identity record found for presented assertion "
                                          f"subject '{subject}'."}, status=400)
            scope = str(form.get("scope", ""))
            self.issued.append({"identity": identity["name"], "subject": subject, "scope": scope})
            return web.json_response({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                                      "access_token": f"demo-entra-token.{identity['name']}.{uuid.uuid4().hex}"})

        app = web.Application()
        app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
        return app
