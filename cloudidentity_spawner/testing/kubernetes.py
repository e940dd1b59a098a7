"""A strict, in-memory Kubernetes API server for tests and the local demo.

No real kube-apiserver can run where this project is tested, so this module
serves the part of the Kubernetes REST API that KubeSpawner, kubernetes_asyncio
and this package use, over real HTTP on 127.0.0.1, and answers like the real
server does - including when the request is wrong:

* core/v1 namespaced resources (pods, serviceaccounts, events, secrets,
  services, configmaps, persistentvolumeclaims) and namespaces; any other
  resource is a 404, as on a server that does not serve it;
* create (201; 409 ``AlreadyExists``; 422 ``Invalid`` for a bad name; 404 for a
  missing namespace; 400 for a namespace mismatch), get, list, delete, replace
  (409 ``Conflict`` on a stale resourceVersion), and patch as JSON merge patch,
  strategic merge patch (maps merged, lists replaced) or JSON patch; 415 for
  other content types;
* every object gets ``namespace``, ``uid``, ``resourceVersion``,
  ``creationTimestamp``; lists carry the collection ``resourceVersion``;
* label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``)
  and field selectors (``=``, ``==``, ``!=`` on any dotted field);
* watches (``watch=true``, ``True`` or ``1``) that replay from
  ``resourceVersion``, stream ADDED/MODIFIED/DELETED, and end after
  ``timeoutSeconds`` like the real server;
* a kubelet simulator: a created pod starts ``Pending``, then (after
  ``kubelet_delay``) becomes ``Running`` with a podIP, Ready conditions and
  complete container statuses, with Scheduled/Pulled/Created/Started events;
  a ``pod_runner`` callback can start a real process for the pod;
* ServiceAccount tokens as kube-apiserver issues them (RS256; ``sub``, ``aud``, ``exp`` and the
  ``kubernetes.io`` claims): TokenRequest (``POST .../serviceaccounts/<name>/token``), a pod's
  projected token volumes (:meth:`KubernetesAPI.projected_token`, what the kubelet writes), and
  the issuer discovery document and keys (``/.well-known/openid-configuration``,
  ``/openid/v1/jwks``) that an object store or cloud fetches to check them;
* fault injection (``fail(...)``: the next N matching requests get an error
  status), per-request ``latency``, watches that hear of changes late
  (``watch_delays``), and a request log for counting calls.

What every real cluster does to these objects, and the emulator too:

* names, label and annotation keys are validated (DNS labels/subdomains,
  qualified names ``[prefix/]name``), annotations at most 256 KiB in all (422);
* every namespace has the ServiceAccount ``default``; a pod runs under an
  existing ServiceAccount (``default`` if it names none) or is refused with
  403 ``error looking up service account <ns>/<name>`` (ServiceAccount admission);
* a namespace being deleted is ``Terminating`` and refuses new objects with 403
  (NamespaceLifecycle admission), then is emptied and removed;
* pods are deleted gracefully: ``deletionTimestamp`` is set, the pod stays
  readable and its name taken until its containers stop (``termination_delay``),
  ``gracePeriodSeconds: 0`` deletes at once; ``deletecollection`` deletes what
  its selectors select.

What it does not model, so tests of these need a real cluster (``--kubeconfig``):
RBAC and authentication (every request is allowed), API groups other than core
v1 and resources other than those above, server-side apply, ``generateName``
retries, ``ownerReferences`` and garbage collection, finalizers, quotas and
LimitRanges, webhooks (EKS's pod-identity webhook, GKE's metadata server),
scheduling and images (the kubelet simulator starts every pod), watch
bookmarks and ``410 Gone`` for expired resource versions, the token volume
the ServiceAccount admission plugin mounts, and TokenReview (a token of a deleted pod
or account still verifies until it expires, as it does for any relying party outside
the cluster).

Start it with :class:`KubernetesAPIServer`; it runs its own event loop in a
thread so tests in any loop (and blocking code) can use it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import itertools
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .tokens import DISCOVERY_PATH, JWKS_PATH, TokenIssuer

NAMESPACED = {
    "pods": "Pod",
    "serviceaccounts": "ServiceAccount",
    "events": "Event",
    "secrets": "Secret",
    "services": "Service",
    "configmaps": "ConfigMap",
    "persistentvolumeclaims": "PersistentVolumeClaim",
}
CLUSTER = {"namespaces": "Namespace"}
KINDS = {**NAMESPACED, **CLUSTER}

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
# Names that must be DNS labels (RFC 1123); the rest are DNS subdomains.
_LABEL_NAMED = {"namespaces", "services"}


class APIError(Exception):
    """An error answered as a Kubernetes ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_found(resource: str, name: str) -> APIError:
    return APIError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})


def _invalid(kind: str, name: str, causes: list[tuple[str, str]]) -> APIError:
    message = "; ".join(f"{field_}: {msg}" for field_, msg in causes)
    return APIError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {message}',
        {
            "name": name,
            "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
        },
    )


MAX_ANNOTATIONS_BYTES = 256 * 1024
"""The API server's limit on the total size of an object's annotations (keys and values)."""
_QUALIFIED_NAME_MESSAGE = (
    "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' "
    "(e.g. 'example.com/MyName')"
)


def _is_qualified_name(key: Any) -> bool:
    """A label or annotation key: ``[prefix/]name``, the prefix a DNS subdomain (at most 253),
    the name at most 63 characters of ``[A-Za-z0-9_.-]`` with alphanumeric ends; one ``/`` at most."""
    if not isinstance(key, str) or key.count("/") > 1:
        return False
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and _LABEL_NAME.fullmatch(name) is not None


def _secret_data(obj: dict[str, Any]) -> None:
    """What the API server does with a Secret's data on every write: ``stringData`` (write-only)
    merged into ``data`` base64-encoded, and ``data`` that is not base64 refused (400)."""
    string_data = obj.pop("stringData", None) or {}
    data = obj.get("data") or {}
    for key, value in data.items():
        try:
            base64.b64decode(value or "", validate=True)
        except (ValueError, TypeError):
            raise APIError(400, "BadRequest", f"Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data "
                                              f"at input byte 0 (data.{key})") from None
    for key, value in string_data.items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    if data:
        obj["data"] = data


def validate_metadata(resource: str, obj: dict[str, Any]) -> None:
    """Reject what the real API server's validation rejects for names and labels."""
    kind = KINDS[resource]
    if resource == "secrets":
        _secret_data(obj)
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    causes = []
    if not isinstance(name, str) or not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif resource in _LABEL_NAMED:
        if len(name) > 63 or not _DNS_LABEL.fullmatch(name):
            causes.append(("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \'-\', and must start and end with an alphanumeric character'))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        causes.append(("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \'-\' or \'.\', and must start and end with an alphanumeric character'))
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            causes.append(("metadata.labels", f'Invalid value: "{value}": a valid label must be an empty string or consist of alphanumeric characters, \'-\', \'_\' or \'.\', and must start and end with an alphanumeric character'))
        if not _is_qualified_name(key):
            causes.append(("metadata.labels", f'Invalid value: "{key}": {_QUALIFIED_NAME_MESSAGE}'))
    annotations = meta.get("annotations") or {}
    for key, value in annotations.items():
        # The API server lower-cases annotation keys before validating them (not label keys).
        if not _is_qualified_name(key.lower() if isinstance(key, str) else key):
            causes.append(("metadata.annotations", f'Invalid value: "{key}": {_QUALIFIED_NAME_MESSAGE}'))
        if not isinstance(value, str):
            causes.append(("metadata.annotations", f"Invalid value: {key}: annotation values must be strings"))
    size = sum(len(str(k).encode()) + len((v if isinstance(v, str) else "").encode()) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        causes.append(("metadata.annotations", f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"))
    if resource == "pods":
        causes += _pod_spec_causes(obj.get("spec") or {})
    if causes:
        raise _invalid(kind, name if isinstance(name, str) else "", causes)


ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
"""Kubernetes' environment variable names (``IsEnvVarName``): letters, digits, '-', '.', '_',
not starting with a digit."""


def _pod_spec_causes(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """What validation refuses in a pod's containers: environment variable names."""
    causes = []
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(kind) or []):
            for j, env in enumerate((container or {}).get("env") or []):
                name = (env or {}).get("name")
                if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
                    causes.append((f"spec.{kind}[{i}].env[{j}].name", f'Invalid value: "{name}": a valid environment '
                                   "variable name must consist of alphabetic characters, digits, '_', '-', or '.', and "
                                   "must not start with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or "
                                   "'MyEnvName1', regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')"))
    return causes


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise APIError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 add/remove/replace/test (what clients send to Kubernetes)."""
    if not isinstance(operations, list):
        raise APIError(400, "BadRequest", "json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        parts = _pointer(op.get("path", ""))
        if not parts:
            raise APIError(422, "Invalid", "cannot patch the whole object")
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part) if isinstance(parent, dict) else None
            if parent is None:
                raise APIError(422, "Invalid", f"the server rejected our request due to an error in our request: path {op.get('path')} not found")
        last = parts[-1]
        kind = op.get("op")
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise APIError(422, "Invalid", f"testing value {op.get('path')} failed")
        elif kind in ("add", "replace"):
            if kind == "replace" and isinstance(parent, dict) and last not in parent:
                raise APIError(422, "Invalid", f"replace operation does not apply: doc is missing path: {op.get('path')}")
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, op.get("value"))
                else:
                    parent[index] = op.get("value")
            else:
                parent[last] = op.get("value")
        elif kind == "remove":
            try:
                del parent[int(last) if isinstance(parent, list) else last]
            except (KeyError, IndexError):
                raise APIError(422, "Invalid", f"remove operation does not apply: doc is missing path: {op.get('path')}") from None
        else:
            raise APIError(422, "Invalid", f"unsupported JSON patch operation {kind!r}")
    return doc


def _field(obj: dict[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def parse_label_selector(selector: str) -> Callable[[dict[str, str]], bool]:
    """Compile a label selector; a malformed one is a 400 like the real server's."""
    tests = []
    for term in re.findall(r"(?:[^,(]|\([^)]*\))+", selector or ""):
        term = term.strip()
        if not term:
            continue
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",")}
            tests.append(lambda L, k=key, o=op, v=values: (L.get(k) in v) if o == "in" else (L.get(k) not in v))
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", term):
            key, op, value = m[1], m[2], m[3]
            tests.append(lambda L, k=key, o=op, v=value: (L.get(k) == v) if o != "!=" else (L.get(k) != v))
        elif m := re.fullmatch(r"(!?)([\w./-]+)", term):
            neg, key = m[1], m[2]
            tests.append(lambda L, k=key, n=neg: (k in L) != bool(n))
        else:
            raise APIError(400, "BadRequest", f"unable to parse requirement: {term!r}")
    return lambda labels: all(t(labels) for t in tests)


def parse_field_selector(selector: str) -> Callable[[dict[str, Any]], bool]:
    tests = []
    for term in (selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise APIError(400, "BadRequest", f"invalid field selector: {term!r}")
        path, op, value = m[1], m[2], m[3]
        tests.append(lambda o, p=path, op_=op, v=value: (_field(o, p) == v) != (op_ == "!="))
    return lambda obj: all(t(obj) for t in tests)


@dataclass
class Fault:
    """Answer the next *count* requests matching *method* and *path* (a regex) with *code*."""

    method: str
    path: re.Pattern[str]
    code: int
    count: int
    reason: str = "InternalError"


@dataclass
class Event:
    resource: str
    type: str
    object: dict[str, Any]
    version: int
    at: float = field(default_factory=time.monotonic)
    """When it happened (``time.monotonic()``), for delayed watch delivery."""


@dataclass
class _State:
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    history: list[Event] = field(default_factory=list)
    version: int = 0


class KubernetesAPI:
    """The API server's state and request handling (runs inside one event loop)."""

    def __init__(self, *, kubelet_delay: float = 0.05, latency: float = 0.0, namespaces=("default",),
                 termination_delay: float = 0.05):
        self.kubelet_delay = kubelet_delay
        self.latency = latency
        self.termination_delay = termination_delay
        """Seconds a gracefully deleted pod (or a deleted namespace) takes to go away: a
        container that exits on SIGTERM, or the namespace controller emptying a namespace."""
        self.watch_delays: dict[str, float] = {}
        """Per resource, seconds by which watches hear of changes late (a lagging watch cache)."""
        self.faults: list[Fault] = []
        self.throttle_share = 0.0
        """Answer this share of the requests whose path matches ``throttle_paths`` with 429
        TooManyRequests, as an overloaded API server's priority and fairness does."""
        self.throttle_paths = re.compile(r"/serviceaccounts")
        self.requests: list[tuple[str, str, str]] = []
        self.request_times: list[float] = []
        """``time.perf_counter()`` at arrival of each request in ``requests``."""
        self.pod_runner: Callable[[dict[str, Any]], Any] | None = None
        """``async (pod) -> podIP or None``: start something real for a new pod."""
        self.pod_stopper: Callable[[dict[str, Any]], Any] | None = None
        """``(pod) -> None``: stop what ``pod_runner`` started, when the pod is deleted."""
        self._ip_counter = itertools.count(2)
        self.issuer = TokenIssuer()
        """Signs ServiceAccount tokens (TokenRequest, projected volumes); its issuer is the server's URL."""
        self._state = _State()
        self._lock = threading.RLock()
        self._changed: asyncio.Event | None = None
        """Set (and replaced) at each change: what watches wait on (no lock held across a wait, so a
        watch closed at any moment - its client gone, the server stopping - leaves nothing half-done)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        for ns in namespaces:
            self.put("namespaces", "", {"metadata": {"name": ns}})

    # -- state ---------------------------------------------------------------

    def _store(self, resource: str, namespace: str, obj: dict[str, Any], event: str) -> dict[str, Any]:
        with self._lock:
            self._state.version += 1
            meta = obj.setdefault("metadata", {})
            meta["resourceVersion"] = str(self._state.version)
            key = (resource, namespace, meta["name"])
            if event == "DELETED":
                self._state.objects.pop(key, None)
            else:
                self._state.objects[key] = obj
            self._state.history.append(Event(resource, event, copy.deepcopy(obj), self._state.version))
        self._notify()
        return obj

    def _notify(self) -> None:
        """Wake the watches; safe to call from any thread."""
        if self._changed is None or self._loop is None:
            return

        def wake() -> None:
            self._changed.set()
            self._changed = asyncio.Event()

        self._loop.call_soon_threadsafe(wake)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of a stored object, or None (for assertions)."""
        with self._lock:
            obj = self._state.objects.get((resource, namespace if resource not in CLUSTER else "", name))
            return copy.deepcopy(obj)

    def list(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(o)
                for (r, ns, _), o in sorted(self._state.objects.items())
                if r == resource and (namespace is None or ns == namespace)
            ]

    def written(self, namespaces: Collection[str]) -> list[dict[str, Any]]:
        """Each version of each object created or changed in *namespaces* (and of those namespaces
        themselves), as stored - what clients sent, merged as the API server merges it."""
        with self._lock:
            return [copy.deepcopy(e.object) for e in self._state.history
                    if e.type in ("ADDED", "MODIFIED")
                    and (e.object.get("metadata", {}).get("namespace") in namespaces
                         or (e.resource == "namespaces" and e.object["metadata"]["name"] in namespaces))]

    def _default_service_account(self, namespace: str) -> None:
        """Every namespace gets the ServiceAccount ``default``, as the ServiceAccount controller makes it."""
        self.put("serviceaccounts", namespace, {"metadata": {"name": "default"}})

    def put(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object directly (test setup), filling metadata like a create."""
        obj = copy.deepcopy(obj)
        self._fill_metadata(resource, namespace, obj)
        stored = copy.deepcopy(self._store(resource, namespace if resource not in CLUSTER else "", obj, "ADDED"))
        if resource == "namespaces":
            self._default_service_account(stored["metadata"]["name"])
        return stored

    def fail(self, method: str, path: str, code: int = 500, count: int = 1, reason: str = "InternalError") -> None:
        """Answer the next *count* ``method`` requests whose path matches regex *path* with *code*."""
        self.faults.append(Fault(method.upper(), re.compile(path), code, count, reason))

    def count(self, method: str | None = None, path: str = "") -> int:
        """How many requests were served (optionally of one method, paths matching a regex)."""
        rx = re.compile(path)
        return sum(1 for m, p, _ in list(self.requests) if (method is None or m == method.upper()) and rx.search(p))

    # -- HTTP ----------------------------------------------------------------

    def app(self) -> web.Application:
        # kube-apiserver takes request bodies up to 3 MiB (aiohttp: 1 MiB by default).
        app = web.Application(middlewares=[self._middleware], client_max_size=3 * 1024 * 1024)
        r = app.router
        r.add_get("/version", self._version)
        r.add_get("/api", self._api_versions)
        r.add_get("/apis", self._api_groups)
        r.add_get("/api/v1", self._discovery)
        r.add_route("*", "/api/v1/namespaces", self._collection_cluster)
        r.add_route("*", "/api/v1/namespaces/{name}", self._object_cluster)
        r.add_route("*", "/api/v1/namespaces/{namespace}/{resource}", self._collection)
        r.add_route("*", "/api/v1/namespaces/{namespace}/{resource}/{name}", self._object)
        r.add_route("*", "/api/v1/namespaces/{namespace}/{resource}/{name}/{sub}", self._subresource)
        r.add_route("*", "/api/v1/{resource}", self._collection_all)
        r.add_get(DISCOVERY_PATH, self._issuer_discovery)
        r.add_get(JWKS_PATH, self._issuer_keys)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    async def _on_shutdown(self, app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        self.request_times.append(time.perf_counter())
        self.requests.append((request.method, request.path, request.query_string))
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.throttle_share and self.throttle_paths.search(request.path) and random.random() < self.throttle_share:
            error = APIError(429, "TooManyRequests", "the server has received too many requests and has asked us to try again later")
            return web.json_response(error.status(), status=429, headers={"Retry-After": "1"})
        for fault in list(self.faults):
            if fault.count > 0 and fault.method in (request.method, "*") and fault.path.search(request.path):
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                error = APIError(fault.code, fault.reason, f"injected failure {fault.code} for {request.method} {request.path}")
                return web.json_response(error.status(), status=fault.code)
        try:
            return await handler(request)
        except APIError as e:
            return web.json_response(e.status(), status=e.code)

    async def _api_versions(self, request):
        return web.json_response({"kind": "APIVersions", "versions": ["v1"]})

    async def _api_groups(self, request):
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def _version(self, request):
        return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-cloudidentity-emulator", "platform": "linux/amd64"})

    async def _discovery(self, request):
        resources = [
            {"name": r, "singularName": "", "namespaced": r in NAMESPACED, "kind": k,
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
            for r, k in KINDS.items()
        ]
        return web.json_response({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})

    async def _unknown(self, request):
        raise APIError(404, "NotFound", "the server could not find the requested resource", {})

    def _resource(self, resource: str) -> str:
        if resource not in NAMESPACED:
            raise APIError(404, "NotFound", "the server could not find the requested resource", {})
        return resource

    def _require_namespace(self, namespace: str) -> None:
        if ("namespaces", "", namespace) not in self._state.objects:
            raise _not_found("namespaces", namespace)

    async def _body(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "BadRequest", "the request body is not valid JSON") from None

    # collections

    async def _collection(self, request):
        resource = self._resource(request.match_info["resource"])
        namespace = request.match_info["namespace"]
        if request.method == "GET":
            return await self._list_or_watch(request, resource, namespace)
        if request.method == "POST":
            return await self._create(request, resource, namespace)
        if request.method == "DELETE":
            return await self._delete_collection(request, resource, namespace)
        raise APIError(405, "MethodNotAllowed", f"{request.method} is not allowed on a collection")

    async def _collection_all(self, request):
        resource = self._resource(request.match_info["resource"])
        if request.method != "GET":
            raise APIError(405, "MethodNotAllowed", f"{request.method} is not allowed here")
        return await self._list_or_watch(request, resource, None)

    async def _collection_cluster(self, request):
        if request.method == "GET":
            return await self._list_or_watch(request, "namespaces", None)
        if request.method == "POST":
            return await self._create(request, "namespaces", "")
        raise APIError(405, "MethodNotAllowed", f"{request.method} is not allowed on a collection")

    async def _object_cluster(self, request):
        return await self._object_request(request, "namespaces", "", request.match_info["name"])

    async def _object(self, request):
        resource = self._resource(request.match_info["resource"])
        return await self._object_request(request, resource, request.match_info["namespace"], request.match_info["name"])

    async def _issuer_discovery(self, request):
        return web.json_response(self.issuer.discovery())

    async def _issuer_keys(self, request):
        return web.json_response(self.issuer.jwks(), content_type="application/jwk-set+json")

    async def _token_request(self, request, namespace: str, name: str):
        """TokenRequest (``POST .../serviceaccounts/<name>/token``): a token for an existing account."""
        if request.method != "POST":
            raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        body = await self._body(request)
        spec = (body or {}).get("spec") or {}
        expiration = spec.get("expirationSeconds", 3600)
        if not isinstance(expiration, int) or isinstance(expiration, bool) or expiration < 600:
            raise APIError(422, "Invalid", "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes")
        with self._lock:
            account = copy.deepcopy(self._state.objects.get(("serviceaccounts", namespace, name)))
        if account is None:
            raise APIError(404, "NotFound", f'serviceaccounts "{name}" not found', {"name": name, "kind": "serviceaccounts"})
        audiences = spec.get("audiences") or [self.issuer.issuer]
        token, exp = self.issuer.issue(namespace, account, audiences, expiration)
        stamp = datetime.datetime.fromtimestamp(exp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                                  "metadata": {"name": name, "namespace": namespace},
                                  "spec": {"audiences": audiences, "expirationSeconds": expiration},
                                  "status": {"token": token, "expirationTimestamp": stamp}}, status=201)

    def projected_token(self, namespace: str, pod_name: str, volume: str) -> str:
        """The token the kubelet writes into a pod's projected ServiceAccount token volume: for
        the pod's ServiceAccount, bound to the pod, with the volume's audience and lifetime."""
        with self._lock:
            pod = copy.deepcopy(self._state.objects.get(("pods", namespace, pod_name)))
            if pod is None:
                raise KeyError(f"no pod {namespace}/{pod_name}")
            account = copy.deepcopy(self._state.objects.get(
                ("serviceaccounts", namespace, pod["spec"].get("serviceAccountName") or "default")))
        if account is None:
            raise KeyError(f"the ServiceAccount of pod {namespace}/{pod_name} does not exist")
        for v in pod["spec"].get("volumes") or []:
            if v.get("name") == volume:
                for source in (v.get("projected") or {}).get("sources") or []:
                    token = source.get("serviceAccountToken")
                    if token:
                        audiences = [token["audience"]] if token.get("audience") else [self.issuer.issuer]
                        return self.issuer.issue(namespace, account, audiences, token.get("expirationSeconds", 3600), pod)[0]
        raise KeyError(f"pod {namespace}/{pod_name} has no projected ServiceAccount token volume {volume!r}")

    async def _subresource(self, request):
        resource = self._resource(request.match_info["resource"])
        if resource == "serviceaccounts" and request.match_info["sub"] == "token":
            return await self._token_request(request, request.match_info["namespace"], request.match_info["name"])
        if request.match_info["sub"] != "status":
            raise APIError(404, "NotFound", "the server could not find the requested resource", {})
        return await self._object_request(request, resource, request.match_info["namespace"], request.match_info["name"], status=True)

    def _fill_metadata(self, resource: str, namespace: str, obj: dict[str, Any]) -> None:
        meta = obj.setdefault("metadata", {})
        if resource in NAMESPACED:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta.setdefault("generation", 1)
        obj["apiVersion"] = "v1"
        obj["kind"] = KINDS[resource]
        if resource == "pods":
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        if resource == "namespaces":
            obj["status"] = {"phase": "Active"}

    async def _create(self, request, resource: str, namespace: str):
        obj = await self._body(request)
        if not isinstance(obj, dict):
            raise APIError(400, "BadRequest", "the request body must be an object")
        meta = obj.setdefault("metadata", {}) or {}
        if resource in NAMESPACED:
            if meta.get("namespace") not in (None, "", namespace):
                raise APIError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        validate_metadata(resource, obj)
        with self._lock:
            if resource in NAMESPACED:
                self._require_namespace(namespace)
                self._admit(resource, namespace, obj)
            if (resource, namespace, meta["name"]) in self._state.objects:
                raise APIError(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists', {"name": meta["name"], "kind": resource})
            for key in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(key, None)
            self._fill_metadata(resource, namespace, obj)
            stored = self._store(resource, namespace, obj, "ADDED")
            result = copy.deepcopy(stored)
            if resource == "namespaces":
                self._default_service_account(meta["name"])
        if resource == "pods":
            self._spawn(self._kubelet(namespace, meta["name"], meta["uid"]))
        return web.json_response(result, status=201)

    def _admit(self, resource: str, namespace: str, obj: dict[str, Any]) -> None:
        """The admission plugins every cluster runs, for what they refuse (403 Forbidden).

        NamespaceLifecycle: nothing new in a namespace that is being deleted.
        ServiceAccount: a pod runs under an existing ServiceAccount (``default``
        when it names none), and its spec says which.
        """
        name = obj["metadata"]["name"]
        ns = self._state.objects[("namespaces", "", namespace)]
        if ns["metadata"].get("deletionTimestamp"):
            message = f"unable to create new content in namespace {namespace} because it is being terminated"
            raise APIError(403, "Forbidden", f'{resource} "{name}" is forbidden: {message}', {
                "name": name, "kind": resource,
                "causes": [{"reason": "NamespaceTerminating", "message": message, "field": "metadata.namespace"}],
            })
        if resource == "pods":
            spec = obj.setdefault("spec", {})
            account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
            if ("serviceaccounts", namespace, account) not in self._state.objects:
                raise APIError(403, "Forbidden", f'pods "{name}" is forbidden: error looking up service account '
                               f'{namespace}/{account}: serviceaccount "{account}" not found', {"name": name, "kind": "pods"})
            spec["serviceAccountName"] = spec["serviceAccount"] = account

    async def _object_request(self, request, resource: str, namespace: str, name: str, status: bool = False):
        key = (resource, namespace, name)
        method = request.method
        if method == "GET":
            with self._lock:
                obj = self._state.objects.get(key)
                if obj is None:
                    raise _not_found(resource, name)
                return web.json_response(copy.deepcopy(obj))
        if method == "DELETE":
            options = await self._delete_options(request)
            with self._lock:
                if key not in self._state.objects:
                    raise _not_found(resource, name)
                return web.json_response(self._delete(resource, namespace, name, options))
        if method in ("PUT", "PATCH"):
            body = await self._body(request)
            with self._lock:
                current = self._state.objects.get(key)
                if current is None:
                    raise _not_found(resource, name)
                if method == "PUT":
                    new = body
                    sent_version = ((new or {}).get("metadata") or {}).get("resourceVersion")
                    if not sent_version:
                        raise _invalid(KINDS[resource], name, [("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")])
                else:
                    content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
                    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                        if not isinstance(body, dict):
                            raise APIError(400, "BadRequest", "a merge patch must be a JSON object")
                        new = json_merge_patch(current, body)
                    elif content_type == "application/json-patch+json":
                        new = json_patch(current, body)
                    else:
                        raise APIError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json")
                    sent_version = ((body if isinstance(body, dict) else {}).get("metadata") or {}).get("resourceVersion")
                if sent_version and sent_version != current["metadata"]["resourceVersion"]:
                    raise APIError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; please apply your changes to the latest version and try again', {"name": name, "kind": resource})
                new_meta = new.setdefault("metadata", {})
                if new_meta.get("name", name) != name:
                    raise APIError(400, "BadRequest", "the name of the object does not match the name on the URL")
                if resource in NAMESPACED and new_meta.get("namespace", namespace) != namespace:
                    raise APIError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
                # Immutable metadata stays what the server set.
                for k in ("uid", "creationTimestamp", "namespace", "name"):
                    if k in current["metadata"]:
                        new_meta[k] = current["metadata"][k]
                new["apiVersion"], new["kind"] = "v1", KINDS[resource]
                if status:
                    merged = copy.deepcopy(current)
                    merged["status"] = new.get("status", {})
                    new = merged
                elif "status" in current:
                    new["status"] = current["status"]  # the main resource cannot change status
                validate_metadata(resource, new)
                stored = self._store(resource, namespace, new, "MODIFIED")
                return web.json_response(copy.deepcopy(stored))
        raise APIError(405, "MethodNotAllowed", f"{method} is not allowed on an object")

    async def _delete_options(self, request) -> dict[str, Any]:
        """DeleteOptions from the body (clients send them there) or the query string."""
        body = await request.read()
        try:
            options = json.loads(body) if body else {}
        except json.JSONDecodeError:
            raise APIError(400, "BadRequest", "the request body is not valid JSON") from None
        if "gracePeriodSeconds" in request.query:
            options["gracePeriodSeconds"] = int(request.query["gracePeriodSeconds"])
        return options or {}

    def _delete(self, resource: str, namespace: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """Delete one object as the real server does; returns what the DELETE answers (hold the lock).

        Pods are deleted gracefully: ``deletionTimestamp`` is set (the pod is
        Terminating, still readable, its name still taken) and the pod goes away
        once its containers stop - after ``termination_delay``, or the grace
        period if shorter; ``gracePeriodSeconds: 0`` deletes at once. A namespace
        becomes Terminating, refuses new objects, and is emptied and removed after
        ``termination_delay``. Everything else goes at once.
        """
        key = (resource, namespace, name)
        obj = self._state.objects[key]
        meta = obj["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise APIError(409, "Conflict", f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: {meta['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise APIError(409, "Conflict", "Precondition failed: resourceVersion mismatch")
        if meta.get("deletionTimestamp"):
            return copy.deepcopy(obj)  # already going; a second delete changes nothing here
        if resource == "pods":
            grace = options.get("gracePeriodSeconds")
            if grace is None:
                grace = (obj.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
            if self.pod_stopper is not None:
                self.pod_stopper(copy.deepcopy(obj))
            if grace > 0:
                terminating = copy.deepcopy(obj)
                terminating["metadata"]["deletionTimestamp"] = _now()
                terminating["metadata"]["deletionGracePeriodSeconds"] = grace
                stored = self._store(resource, namespace, terminating, "MODIFIED")
                self._spawn(self._remove_later(key, meta["uid"], min(grace, self.termination_delay)))
                return copy.deepcopy(stored)
        if resource == "namespaces":
            terminating = copy.deepcopy(obj)
            terminating["metadata"]["deletionTimestamp"] = _now()
            terminating["status"] = {"phase": "Terminating"}
            stored = self._store(resource, namespace, terminating, "MODIFIED")
            self._spawn(self._empty_namespace_later(name, meta["uid"]))
            return copy.deepcopy(stored)
        deleted = copy.deepcopy(obj)
        deleted["metadata"]["deletionTimestamp"] = _now()
        self._store(resource, namespace, deleted, "DELETED")
        return deleted

    async def _remove_later(self, key: tuple[str, str, str], uid: str, delay: float) -> None:
        await asyncio.sleep(delay)
        with self._lock:
            obj = self._state.objects.get(key)
            if obj is not None and obj["metadata"]["uid"] == uid:
                self._store(key[0], key[1], copy.deepcopy(obj), "DELETED")

    async def _empty_namespace_later(self, name: str, uid: str) -> None:
        await asyncio.sleep(self.termination_delay)
        with self._lock:
            for other in [k for k in self._state.objects if k[1] == name and k[0] != "namespaces"]:
                obj = copy.deepcopy(self._state.objects[other])
                if other[0] == "pods" and self.pod_stopper is not None and not obj["metadata"].get("deletionTimestamp"):
                    self.pod_stopper(obj)
                self._store(other[0], other[1], obj, "DELETED")
        await self._remove_later(("namespaces", "", name), uid, 0)

    async def _delete_collection(self, request, resource: str, namespace: str):
        """deletecollection: every selected object is deleted as by its own DELETE; the answer
        lists them as they were deleted."""
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""))
        options = await self._delete_options(request)
        with self._lock:
            self._require_namespace(namespace)
            keys = [
                k for k, o in sorted(self._state.objects.items())
                if k[0] == resource and k[1] == namespace and labels((o.get("metadata") or {}).get("labels") or {}) and fields(o)
            ]
            items = [self._delete(resource, namespace, k[2], options) for k in keys]
            version = str(self._state.version)
        return web.json_response(
            {"kind": KINDS[resource] + "List", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}
        )

    async def _list_or_watch(self, request, resource: str, namespace: str | None):
        q = request.query
        labels = parse_label_selector(q.get("labelSelector", ""))
        fields = parse_field_selector(q.get("fieldSelector", ""))

        def selected(obj):
            return labels((obj.get("metadata") or {}).get("labels") or {}) and fields(obj)

        def in_scope(ns):
            return namespace is None or ns == namespace

        if q.get("watch", "").lower() in ("true", "1"):
            return await self._watch(request, resource, in_scope, selected)
        with self._lock:
            items = [
                copy.deepcopy(o)
                for (r, ns, _), o in sorted(self._state.objects.items())
                if r == resource and in_scope(ns) and selected(o)
            ]
            version = str(self._state.version)
        return web.json_response(
            {"kind": KINDS[resource] + "List", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}
        )

    async def _watch(self, request, resource, in_scope, selected):
        q = request.query
        timeout = float(q.get("timeoutSeconds") or 1800)
        try:
            since = int(q.get("resourceVersion") or 0)
        except ValueError:
            raise APIError(400, "BadRequest", "invalid resourceVersion") from None
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        position = 0
        with self._lock:
            if since == 0:
                # No version: synthetic ADDED events for what exists now, then changes.
                initial = [
                    Event(resource, "ADDED", copy.deepcopy(o), self._state.version)
                    for (r, ns, _), o in sorted(self._state.objects.items())
                    if r == resource and in_scope(ns)
                ]
                position = len(self._state.history)
            else:
                initial = []
                position = next((i for i, e in enumerate(self._state.history) if e.version > since), len(self._state.history))
        try:
            pending = initial
            while True:
                for event in pending:
                    ns = (event.object.get("metadata") or {}).get("namespace", "")
                    if event.resource == resource and in_scope(ns) and selected(event.object):
                        late = event.at + self.watch_delays.get(resource, 0.0) - time.monotonic()
                        if late > 0:
                            await asyncio.sleep(late)
                        line = json.dumps({"type": event.type, "object": event.object}) + "\n"
                        await response.write(line.encode())
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                changed = self._changed  # before looking: a change after this sets it
                with self._lock:
                    fresh = len(self._state.history) > position
                if not fresh:
                    try:
                        await asyncio.wait_for(changed.wait(), timeout=min(remaining, 1.0))
                    except asyncio.TimeoutError:
                        pass
                with self._lock:
                    pending = self._state.history[position:]
                    position = len(self._state.history)
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away, as watch clients do
        return response

    # -- kubelet ---------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, namespace: str, pod: dict[str, Any], reason: str, message: str) -> None:
        meta = pod["metadata"]
        name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
        event = {
            "metadata": {"name": name},
            "involvedObject": {"kind": "Pod", "namespace": namespace, "name": meta["name"], "uid": meta["uid"], "apiVersion": "v1"},
            "reason": reason,
            "message": message,
            "type": "Normal",
            "source": {"component": "kubelet"},
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
        }
        self._fill_metadata("events", namespace, event)
        self._store("events", namespace, event, "ADDED")

    async def _kubelet(self, namespace: str, name: str, uid: str) -> None:
        """Move a new pod to Running the way a node would."""
        await asyncio.sleep(self.kubelet_delay)
        with self._lock:
            pod = self._state.objects.get(("pods", namespace, name))
            if pod is None or pod["metadata"]["uid"] != uid:
                return
            self._event(namespace, pod, "Scheduled", f"Successfully assigned {namespace}/{name} to emulated-node")
        ip = f"127.0.0.{next(self._ip_counter) % 250 + 2}"
        if self.pod_runner is not None:
            ip = await self.pod_runner(copy.deepcopy(pod)) or ip
        with self._lock:
            pod = copy.deepcopy(self._state.objects.get(("pods", namespace, name)))
            if pod is None or pod["metadata"]["uid"] != uid:
                return
            now = _now()
            containers = pod.get("spec", {}).get("containers", [])
            for c in containers:
                self._event(namespace, pod, "Pulled", f'Container image "{c.get("image")}" already present on machine')
                self._event(namespace, pod, "Started", f"Started container {c.get('name')}")
            pod["status"] = {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "hostIP": "127.0.0.1",
                "startTime": now,
                "qosClass": "BestEffort",
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": now}
                    for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
                ],
                "containerStatuses": [
                    {
                        "name": c.get("name"),
                        "image": c.get("image", ""),
                        "imageID": f"docker-pullable://{c.get('image', '')}@sha256:" + "0" * 64,
                        "containerID": "containerd://" + uuid.uuid4().hex,
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                        "lastState": {},
                    }
                    for c in containers
                ],
            }
            self._store("pods", namespace, pod, "MODIFIED")


class KubernetesAPIServer:
    """Runs a :class:`KubernetesAPI` on 127.0.0.1 in a background thread.

    >>> server = KubernetesAPIServer().start()
    >>> server.url            # http://127.0.0.1:<port>
    >>> server.write_kubeconfig(path)
    >>> server.api.get("serviceaccounts", "default", "jupyter-alice")
    >>> server.stop()
    """

    def __init__(self, api: KubernetesAPI | None = None, port: int = 0):
        self.api = api or KubernetesAPI()
        self.port = port
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def start(self) -> KubernetesAPIServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._serve())
            except BaseException as e:  # reported to start()
                errors.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="kubernetes-api-emulator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        return self

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.api.app(), handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if isinstance(self.api, KubernetesAPI):  # (the runner also serves other local APIs)
            self.api.issuer.issuer = self.url

    def stop(self) -> None:
        """Close every connection (watches included), then stop the thread."""
        if self._loop and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def kubeconfig(self, namespace: str = "default") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}],
            "current-context": "emulator",
        }

    def write_kubeconfig(self, path, namespace: str = "default") -> str:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.kubeconfig(namespace), f)
        return str(path)

