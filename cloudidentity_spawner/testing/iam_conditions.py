"""Google IAM allow-policy evaluation for the local Google Cloud server.

A principal may do something when a binding in one of the policies that
apply (project, bucket, managed folder) names them, its role carries the
permission, and its condition - a CEL expression - is true. Conditions are
evaluated by a real CEL implementation (``cel-python``) with the attributes
Google documents for IAM conditions:

* ``resource.name``, ``resource.type``, ``resource.service``;
* ``request.time`` (a timestamp);
* ``api.getAttribute(name, default)`` and the IAM list function ``hasOnly``.

Google documents that Cloud Storage API attributes such as
``storage.googleapis.com/objectListPrefix`` are supported only in Credential
Access Boundaries, and that in a role binding they make Cloud Storage "work
incorrectly and fail unexpectedly". In role bindings this evaluator therefore
never defines them: ``api.getAttribute`` returns the default, so a binding that
relies on one grants nothing here, as it cannot be relied on in the real cloud.
An expression that does not parse is refused when the policy is set (400); one
that fails while evaluating counts as false, as in IAM.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import celpy
from celpy import celtypes

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "roles/storage.objectViewer": frozenset({
        "storage.objects.get", "storage.objects.list", "storage.managedFolders.get", "storage.managedFolders.list",
    }),
    "roles/storage.objectCreator": frozenset({"storage.objects.create", "storage.managedFolders.create"}),
    "roles/storage.objectUser": frozenset({
        "storage.objects.create", "storage.objects.delete", "storage.objects.get", "storage.objects.list",
        "storage.objects.update", "storage.managedFolders.create", "storage.managedFolders.delete",
        "storage.managedFolders.get", "storage.managedFolders.list",
    }),
    "roles/storage.objectAdmin": frozenset({
        "storage.objects.create", "storage.objects.delete", "storage.objects.get", "storage.objects.list",
        "storage.objects.update", "storage.objects.getIamPolicy", "storage.objects.setIamPolicy",
        "storage.managedFolders.create", "storage.managedFolders.delete", "storage.managedFolders.get",
        "storage.managedFolders.list",
    }),
    "roles/storage.legacyBucketReader": frozenset({"storage.buckets.get", "storage.objects.list"}),
    "roles/storage.admin": frozenset({
        "storage.buckets.get", "storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy", "storage.buckets.update",
        "storage.objects.create", "storage.objects.delete", "storage.objects.get", "storage.objects.list",
        "storage.objects.update", "storage.managedFolders.create", "storage.managedFolders.delete",
        "storage.managedFolders.get", "storage.managedFolders.list", "storage.managedFolders.getIamPolicy",
        "storage.managedFolders.setIamPolicy",
    }),
}
"""The Cloud Storage permissions of the predefined roles tests use (Google's role reference).
A role not listed here grants no storage permission: the double never guesses in the user's favour."""

ROLE_BINDING_API_ATTRIBUTES = frozenset({"iam.googleapis.com/modifiedGrantsByRole"})
"""API attributes Google supports in role-binding conditions (see the module docstring)."""


class ConditionError(ValueError):
    """A condition expression that IAM would refuse to store."""


_environment = celpy.Environment()
_programs: dict[str, Any] = {}
_lock = threading.Lock()


def _get_attribute(api: celtypes.MapType, name: celtypes.StringType, default: Any) -> Any:
    return api[name] if name in api else default


def _has_only(values: celtypes.ListType, allowed: celtypes.ListType) -> celtypes.BoolType:
    return celtypes.BoolType(all(v in allowed for v in values))


def compile_condition(expression: str) -> Any:
    """Parse *expression* once (ConditionError if CEL cannot parse it)."""
    with _lock:
        program = _programs.get(expression)
        if program is None:
            try:
                ast = _environment.compile(expression)
            except celpy.CELParseError as e:
                raise ConditionError(f"Condition expression is not valid CEL: {e}") from None
            program = _environment.program(ast, functions={"getAttribute": _get_attribute, "hasOnly": _has_only})
            _programs[expression] = program
        return program


def _cel(value: Any) -> Any:
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, datetime.datetime):
        return celtypes.TimestampType(value)
    if isinstance(value, Mapping):
        return celtypes.MapType({celtypes.StringType(k): _cel(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return celtypes.ListType([_cel(v) for v in value])
    raise TypeError(f"no CEL value for {type(value).__name__}")


def condition_holds(expression: str, resource: Mapping[str, str], api: Mapping[str, Any] | None = None,
                    now: datetime.datetime | None = None) -> bool:
    """Evaluate one condition; an evaluation error is false, as in IAM."""
    activation = {
        "resource": _cel(dict(resource)),
        "request": _cel({"time": now or datetime.datetime.now(datetime.timezone.utc)}),
        "api": _cel(dict(api or {})),
    }
    try:
        result = compile_condition(expression).evaluate(activation)
    except (celpy.CELEvalError, ConditionError, TypeError, KeyError):
        return False
    return isinstance(result, celtypes.BoolType) and bool(result)


def allows(
    policies: Iterable[Mapping[str, Any]],
    member: str,
    permission: str,
    resource: Mapping[str, str],
    api: Mapping[str, Any] | None = None,
    role_permissions: Mapping[str, frozenset[str]] = ROLE_PERMISSIONS,
) -> bool:
    """Whether any binding of *policies* gives *member* the *permission* on *resource*."""
    attributes = {k: v for k, v in (api or {}).items() if k in ROLE_BINDING_API_ATTRIBUTES}
    for policy in policies:
        for binding in policy.get("bindings", []):
            if member not in binding.get("members", ()) or permission not in role_permissions.get(binding["role"], ()):
                continue
            condition = binding.get("condition")
            if not condition or condition_holds(condition["expression"], resource, attributes):
                return True
    return False
