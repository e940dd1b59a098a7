"""CloudIdentitySpawner: KubeSpawner that runs each user's pods under their own cloud identity."""

from __future__ import annotations

from kubespawner import KubeSpawner

from .config import CloudIdentity, user_claims
from .plan import IdentityPlan


class CloudIdentitySpawner(CloudIdentity, KubeSpawner):
    """KubeSpawner that starts each user's pod under the ServiceAccount their identity rule chooses."""

    async def plan_identity(self, namespace: str | None = None) -> IdentityPlan:
        """Resolve this spawn's identity plan from the user's login claims."""
        claims = await user_claims(self, self.user)
        return await self.plan_for(self, claims, namespace or self.namespace)
