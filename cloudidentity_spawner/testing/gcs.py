"""Cloud Storage's JSON API for the local Google Cloud server: buckets, objects, managed folders, IAM.

Enough of the API for the real ``google-cloud-storage`` client (and the hub's
managed-folder calls) to work against it, authorised the way Cloud Storage
authorises:

* A request with a bearer token from :meth:`GoogleCloudState.access_token`
  acts as that Google service account. It is allowed only if the IAM policies
  that apply - the project's, the bucket's and, for objects, those of the
  managed folders containing the object - grant the permission, with each
  binding's condition evaluated in CEL (:mod:`.iam_conditions`). Otherwise
  403 with Cloud Storage's message ("... does not have storage.objects.get
  access to the Google Cloud Storage object ...").
* Listing (``storage.objects.list``) is a request on the bucket
  (``projects/_/buckets/<b>``). A managed folder's policy applies to a list
  request whose ``prefix`` lies inside the folder.
* A request without a token is the project owner's (the hub in tests, whose
  own permissions are not modelled); an unknown token is 401.
* Conditional bindings and managed folders need uniform bucket-level access
  (412 otherwise), conditions need policy version 3 (400), and an etag that
  is stale is 412, as Cloud Storage answers.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web

from .iam_conditions import ConditionError, allows, compile_condition

if TYPE_CHECKING:
    from .gcp import GoogleCloudState

BUCKET_TYPE = "storage.googleapis.com/Bucket"
OBJECT_TYPE = "storage.googleapis.com/Object"
MANAGED_FOLDER_TYPE = "storage.googleapis.com/ManagedFolder"


def bucket_resource(bucket: str) -> str:
    return f"projects/_/buckets/{bucket}"


def managed_folder_resource(bucket: str, folder: str) -> str:
    return f"projects/_/buckets/{bucket}/managedFolders/{folder}"


def _error(code: int, reason: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message, "errors": [{"message": message, "domain": "global", "reason": reason}]}}
    return web.json_response(body, status=code)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _crc32c(data: bytes) -> str | None:
    try:
        import google_crc32c
    except ImportError:  # pragma: no cover - installed with google-cloud-storage
        return None
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


class StorageFace:
    """The Cloud Storage JSON API routes, on the REST server of :class:`GoogleCloudServer`."""

    def __init__(self, state: GoogleCloudState):
        self.state = state

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/storage/v1/b/{bucket}", self.bucket_get)
        r.add_get("/storage/v1/b/{bucket}/iam", self.bucket_iam_get)
        r.add_put("/storage/v1/b/{bucket}/iam", self.bucket_iam_set)
        r.add_get("/storage/v1/b/{bucket}/o", self.objects_list)
        r.add_get("/storage/v1/b/{bucket}/o/{name:.+}", self.object_get)
        r.add_get("/download/storage/v1/b/{bucket}/o/{name:.+}", self.object_get)
        r.add_post("/upload/storage/v1/b/{bucket}/o", self.object_insert)
        r.add_post("/storage/v1/b/{bucket}/managedFolders", self.folder_insert)
        r.add_get("/storage/v1/b/{bucket}/managedFolders", self.folder_list)
        r.add_get("/storage/v1/b/{bucket}/managedFolders/{folder:.+}/iam", self.folder_iam_get)
        r.add_put("/storage/v1/b/{bucket}/managedFolders/{folder:.+}/iam", self.folder_iam_set)
        r.add_get("/storage/v1/b/{bucket}/managedFolders/{folder:.+}", self.folder_get)
        r.add_delete("/storage/v1/b/{bucket}/managedFolders/{folder:.+}", self.folder_delete)

    # -- who is asking, and may they ------------------------------------------------

    def _caller(self, request: web.Request) -> str | None | web.Response:
        """The caller's IAM member (``serviceAccount:...`` or ``principal://...``), None for the
        owner (no token), or a 401 response."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return None
        member = self.state.tokens.get(header.removeprefix("Bearer ").strip())
        if member is None:
            return _error(401, "authError", "Invalid Credentials")
        return member

    def _check(self, caller: str | None, permission: str, bucket: str, resource: dict[str, str],
               folders: list[str] = (), noun: str = "bucket") -> web.Response | None:
        """None if allowed; else the 403 Cloud Storage answers."""
        if caller is None:
            return None
        state = self.state
        project = state.buckets[bucket]["project"]
        policies = [state.policies.get(f"projects/{project}"), state.policies.get(bucket_resource(bucket))]
        policies += [state.policies.get(managed_folder_resource(bucket, f)) for f in folders]
        if allows(policies, caller, permission, resource):
            return None
        return _error(403, "forbidden", f"{caller.removeprefix('serviceAccount:')} does not have {permission} access to the Google Cloud Storage {noun}. "
                      f"Permission '{permission}' denied on resource (or it may not exist).")

    def _begin(self, request: web.Request, call: str) -> tuple[str, str | None, web.Response | None]:
        """Log *call*; then ``(bucket, caller, None)``, or an error answer (no bucket, bad token)."""
        self.state.calls.append(call)
        bucket = request.match_info["bucket"]
        if self.state.throttled():
            return bucket, None, _error(429, "rateLimitExceeded", "The rate of change requests to the resource is too high.")
        if bucket not in self.state.buckets:
            return bucket, None, _error(404, "notFound", "The specified bucket does not exist.")
        caller = self._caller(request)
        if isinstance(caller, web.Response):
            return bucket, None, caller
        return bucket, caller, None

    def _folders_containing(self, bucket: str, name: str) -> list[str]:
        return sorted(f for (b, f) in self.state.managed_folders if b == bucket and name.startswith(f))

    @staticmethod
    def _raw_part(request: web.Request, marker: str) -> str:
        """A path part exactly as sent (object and folder names are URL-encoded, ``/`` as %2F)."""
        raw = request.raw_path.split("?", 1)[0]
        part = raw.split(marker, 1)[1]
        if marker == "/managedFolders/":
            part = part.removesuffix("/iam") if raw.endswith("/iam") else part
            if "/" in part:  # a folder name's slashes must be sent as %2F
                raise web.HTTPNotFound(text='{"error": {"code": 404, "message": "Not Found"}}', content_type="application/json")
        return unquote(part)

    # -- buckets -------------------------------------------------------------------

    async def bucket_get(self, request):
        with self.state._lock:
            bucket, caller, error = self._begin(request, "buckets.get")
            if error:
                return error
            denied = self._check(caller, "storage.buckets.get", bucket, {"name": bucket_resource(bucket), "type": BUCKET_TYPE})
            if denied:
                return denied
            meta = self.state.buckets[bucket]
            return web.json_response({
                "kind": "storage#bucket", "id": bucket, "name": bucket, "projectNumber": "123456789",
                "metageneration": "1", "location": "EU", "storageClass": "STANDARD", "timeCreated": meta["created"],
                "updated": meta["created"],
                "iamConfiguration": {"uniformBucketLevelAccess": {"enabled": meta["uniform_access"]}},
            })

    def _policy_response(self, resource: str, policy: dict[str, Any]) -> web.Response:
        return web.json_response({
            "kind": "storage#policy", "resourceId": resource, "version": policy["version"],
            "etag": base64.b64encode(policy["etag"]).decode(), "bindings": policy["bindings"],
        })

    def _iam_get(self, caller: str | None, resource: str, permission: str, bucket: str, noun: str) -> web.Response:
        denied = self._check(caller, permission, bucket, {"name": resource, "type": BUCKET_TYPE}, noun=noun)
        return denied or self._policy_response(resource, self.state.policies.get(resource))

    def _iam_set(self, caller: str | None, body: dict[str, Any], resource: str, permission: str, bucket: str,
                 noun: str) -> web.Response:
        from .gcp import _from_json

        denied = self._check(caller, permission, bucket, {"name": resource, "type": BUCKET_TYPE}, noun=noun)
        if denied:
            return denied
        policy = _from_json(body)
        conditions = [b["condition"] for b in policy["bindings"] if b.get("condition")]
        if conditions and not self.state.buckets[bucket]["uniform_access"]:
            return _error(412, "conditionNotMet", "IAM conditions require uniform bucket-level access; "
                          "enable uniform bucket-level access on the bucket first.")
        if conditions and policy["version"] < 3:
            return _error(400, "invalid", "IAM policies with conditions require policy version at least 3.")
        for condition in conditions:
            try:
                compile_condition(condition["expression"])
            except ConditionError as e:
                return _error(400, "invalid", str(e))
        problem = self.state.member_problem(policy)
        if problem:
            return _error(400, "invalid", problem)
        if self.state.fail_next_set_with_conflict:  # someone else writes between our read and write
            self.state.fail_next_set_with_conflict -= 1
            self.state.policies.set(resource, self.state.policies.get(resource))
        stored = self.state.policies.set(resource, policy)
        if stored is None:
            return _error(412, "conditionNotMet", "Precondition Failed")
        return self._policy_response(resource, stored)

    async def bucket_iam_get(self, request):
        with self.state._lock:
            bucket, caller, error = self._begin(request, "buckets.getIamPolicy")
            return error or self._iam_get(caller, bucket_resource(bucket), "storage.buckets.getIamPolicy", bucket, "bucket")

    async def bucket_iam_set(self, request):
        body = await request.json()
        with self.state._lock:
            bucket, caller, error = self._begin(request, "buckets.setIamPolicy")
            return error or self._iam_set(caller, body, bucket_resource(bucket), "storage.buckets.setIamPolicy", bucket, "bucket")

    # -- objects -------------------------------------------------------------------

    def _object_json(self, bucket: str, name: str) -> dict[str, Any]:
        item = self.state.objects[(bucket, name)]
        data = item["data"]
        body = {
            "kind": "storage#object", "id": f"{bucket}/{name}/{item['generation']}", "name": name, "bucket": bucket,
            "generation": str(item["generation"]), "metageneration": "1", "contentType": item["content_type"],
            "size": str(len(data)), "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
            "timeCreated": item["created"], "updated": item["created"], "storageClass": "STANDARD",
        }
        crc = _crc32c(data)
        if crc:
            body["crc32c"] = crc
        return body

    async def objects_list(self, request):
        with self.state._lock:
            bucket, caller, error = self._begin(request, "objects.list")
            if error:
                return error
            prefix = request.query.get("prefix", "")
            delimiter = request.query.get("delimiter", "")
            folders = [f for (b, f) in self.state.managed_folders if b == bucket and prefix.startswith(f)]
            denied = self._check(caller, "storage.objects.list", bucket,
                                 {"name": bucket_resource(bucket), "type": BUCKET_TYPE}, folders)
            if denied:
                return denied
            items, prefixes = [], set()
            for (b, name) in sorted(self.state.objects):
                if b != bucket or not name.startswith(prefix):
                    continue
                rest = name[len(prefix):]
                if delimiter and delimiter in rest:
                    prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                else:
                    items.append(self._object_json(bucket, name))
            body: dict[str, Any] = {"kind": "storage#objects", "items": items}
            if prefixes:
                body["prefixes"] = sorted(prefixes)
            return web.json_response(body)

    async def object_get(self, request):
        with self.state._lock:
            bucket, caller, error = self._begin(request, "objects.get")
            if error:
                return error
            name = self._raw_part(request, "/o/")
            resource = {"name": f"{bucket_resource(bucket)}/objects/{name}", "type": OBJECT_TYPE}
            denied = self._check(caller, "storage.objects.get", bucket, resource, self._folders_containing(bucket, name), "object")
            if denied:
                return denied
            if (bucket, name) not in self.state.objects:
                return _error(404, "notFound", f"No such object: {bucket}/{name}")
            if request.query.get("alt") == "media":
                item = self.state.objects[(bucket, name)]
                headers = {"x-goog-generation": str(item["generation"])}
                return web.Response(body=item["data"], content_type=item["content_type"], headers=headers)
            return web.json_response(self._object_json(bucket, name))

    async def object_insert(self, request):
        upload_type = request.query.get("uploadType")
        if upload_type == "multipart":
            reader = await request.multipart()
            metadata = json.loads(await (await reader.next()).text())
            media = await reader.next()
            data = bytes(await media.read())
            content_type = media.headers.get("Content-Type", "application/octet-stream")
            name = metadata.get("name") or request.query.get("name", "")
            content_type = metadata.get("contentType", content_type)
        elif upload_type == "media":
            data = await request.read()
            name = request.query.get("name", "")
            content_type = request.content_type or "application/octet-stream"
        else:
            return _error(400, "invalid", f"Unsupported uploadType {upload_type!r} (this server takes multipart and media)")
        with self.state._lock:
            bucket, caller, error = self._begin(request, "objects.insert")
            if error:
                return error
            if not name:
                return _error(400, "required", "Required parameter: name")
            resource = {"name": f"{bucket_resource(bucket)}/objects/{name}", "type": OBJECT_TYPE}
            folders = self._folders_containing(bucket, name)
            denied = self._check(caller, "storage.objects.create", bucket, resource, folders, "object")
            if not denied and (bucket, name) in self.state.objects:  # overwriting also deletes
                denied = self._check(caller, "storage.objects.delete", bucket, resource, folders, "object")
            if denied:
                return denied
            generation = next(self.state._ids)
            self.state.objects[(bucket, name)] = {
                "data": data, "content_type": content_type, "generation": generation, "created": _now(),
            }
            return web.json_response(self._object_json(bucket, name))

    # -- managed folders -----------------------------------------------------------

    def _folder_name(self, request: web.Request) -> str:
        return self._raw_part(request, "/managedFolders/")

    def _folder_json(self, bucket: str, folder: str) -> dict[str, Any]:
        meta = self.state.managed_folders[(bucket, folder)]
        return {"kind": "storage#managedFolder", "id": f"{bucket}/{folder}", "name": folder, "bucket": bucket,
                "createTime": meta["created"], "updateTime": meta["created"], "metageneration": "1"}

    async def folder_insert(self, request):
        body = await request.json()
        with self.state._lock:
            bucket, caller, error = self._begin(request, "managedFolders.insert")
            if error:
                return error
            folder = body.get("name", "")
            if not re.fullmatch(r"[^\r\n#\[\]*?]+/", folder) or "//" in folder or folder.startswith("/"):
                return _error(400, "invalid", f"Invalid managed folder name {folder!r}: a path ending in '/'.")
            denied = self._check(caller, "storage.managedFolders.create", bucket,
                                 {"name": bucket_resource(bucket), "type": BUCKET_TYPE})
            if denied:
                return denied
            if not self.state.buckets[bucket]["uniform_access"]:
                return _error(412, "conditionNotMet", "Managed folders can only be created in buckets that have "
                              "uniform bucket-level access enabled.")
            if (bucket, folder) in self.state.managed_folders:
                return _error(409, "conflict", f"The managed folder {folder} already exists.")
            self.state.managed_folders[(bucket, folder)] = {"created": _now()}
            return web.json_response(self._folder_json(bucket, folder))

    async def folder_list(self, request):
        """One page of the bucket's managed folders in name order (``prefix``, ``pageSize`` at
        most 1,000, an opaque ``pageToken``), as Cloud Storage lists them."""
        with self.state._lock:
            bucket, caller, error = self._begin(request, "managedFolders.list")
            if error:
                return error
            denied = self._check(caller, "storage.managedFolders.list", bucket,
                                 {"name": bucket_resource(bucket), "type": BUCKET_TYPE})
            if denied:
                return denied
            try:
                size = int(request.query.get("pageSize", "1000"))
            except ValueError:
                return _error(400, "invalid", "Invalid value for pageSize.")
            if not 1 <= size <= 1000:
                return _error(400, "invalid", "pageSize must be between 1 and 1000.")
            token = request.query.get("pageToken", "")
            after = base64.urlsafe_b64decode(token.encode()).decode() if token else ""
            prefix = request.query.get("prefix", "")
            names = sorted(f for (b, f) in self.state.managed_folders if b == bucket and f.startswith(prefix) and f > after)
            body: dict[str, Any] = {"kind": "storage#managedFolders",
                                    "items": [self._folder_json(bucket, f) for f in names[:size]]}
            if len(names) > size:
                body["nextPageToken"] = base64.urlsafe_b64encode(names[size - 1].encode()).decode()
            return web.json_response(body)

    def _begin_folder(self, request: web.Request, call: str) -> tuple[str, str, str | None, web.Response | None]:
        bucket, caller, error = self._begin(request, call)
        folder = self._folder_name(request)
        if not error and (bucket, folder) not in self.state.managed_folders:
            error = _error(404, "notFound", f"The managed folder {folder} does not exist.")
        return bucket, folder, caller, error

    async def folder_get(self, request):
        with self.state._lock:
            bucket, folder, _, error = self._begin_folder(request, "managedFolders.get")
            return error or web.json_response(self._folder_json(bucket, folder))

    async def folder_delete(self, request):
        with self.state._lock:
            bucket, folder, _, error = self._begin_folder(request, "managedFolders.delete")
            if error:
                return error
            if any(b == bucket and n.startswith(folder) for (b, n) in self.state.objects) and \
                    request.query.get("allowNonEmpty") != "true":
                return _error(409, "conflict", f"The managed folder {folder} is not empty.")
            del self.state.managed_folders[(bucket, folder)]
            self.state.policies.drop(managed_folder_resource(bucket, folder))
            return web.Response(status=204)

    async def folder_iam_get(self, request):
        with self.state._lock:
            bucket, folder, caller, error = self._begin_folder(request, "managedFolders.getIamPolicy")
            return error or self._iam_get(caller, managed_folder_resource(bucket, folder),
                                          "storage.managedFolders.getIamPolicy", bucket, "managed folder")

    async def folder_iam_set(self, request):
        body = await request.json()
        with self.state._lock:
            bucket, folder, caller, error = self._begin_folder(request, "managedFolders.setIamPolicy")
            return error or self._iam_set(caller, body, managed_folder_resource(bucket, folder),
                                          "storage.managedFolders.setIamPolicy", bucket, "managed folder")
