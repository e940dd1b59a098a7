"""Hub-managed roles at an S3-compatible object store (boto3; install the ``aws`` extra).

The store's IAM API is a subset of AWS IAM's, so :class:`StoreRoles` is
:class:`.aws_iam.ManagedRoles` - the same ownership tags, trust convergence and
deletion - talking to the store (``c.CloudIdentitySpawner.s3_sts_client_kwargs``), where
roles take effect at once and what the store lacks (UpdateRole, managed policies,
permissions boundaries) is not asked for. Found on Ceph RADOS Gateway 16.2: errors carry
only the HTTP status, and tags come back as separate Key and Value members (both read by
:mod:`.aws_iam`).
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from .aws_iam import ManagedRoles, _code
from .s3_sts import PROVIDER, parse_role_arn


class StoreRoles(ManagedRoles):
    """Create, converge and delete hub-managed roles at an object store."""

    provider = PROVIDER
    default_propagation_seconds = 0.0
    where = "the object store"
    updates_role = False
    attaches_policies = False

    def role_name(self, role_arn: str) -> str:
        return parse_role_arn(role_arn)[2]

    async def hub_made(self, path_prefix: str, hub: str) -> list[dict[str, Any]]:
        """As :meth:`ManagedRoles.hub_made`; the store answers ListRoles with 404 when it has no role."""
        try:
            return await super().hub_made(path_prefix, hub)
        except ClientError as e:
            if _code(e) == "NoSuchEntity":
                return []
            raise
