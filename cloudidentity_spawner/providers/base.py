"""The provider interface: what a kind of cloud identity tells the rest of the package.

A provider owns one rule block (``"aws": {...}``, ``"s3_sts": {...}``): it validates the block
at start-up, renders it into a plan for one user, names what the plan's identity and grants
may collide with, says where hub-made identities live (for ``status`` and ``gc``), tells the
user what their server runs as, and gives the pod what the cloud needs (labels, environment,
projected tokens) after every profile and hook had its say.

The four built-in providers (``aws``, ``gcp``, ``azure``, ``s3_sts``) implement it
(:mod:`.builtin`); a site adds its own without forking by registering an object with these
methods under the entry-point group ``cloudidentity_spawner.providers``, the name being its
rule block's key, e.g. in the site package's ``pyproject.toml``:

    [project.entry-points."cloudidentity_spawner.providers"]
    mystore = "mysite.identity:MyStoreProvider"

Everything a provider does here is pure (no network): making and deleting identities belongs to
its backend (:func:`.backend_for`), which the spawn path and ``gc`` call.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

ENTRY_POINT_GROUP = "cloudidentity_spawner.providers"


class Provider:
    """Base class of a provider; a subclass sets :attr:`key` and implements :meth:`parse`,
    :meth:`plan` and :meth:`named_templates`, and overrides the rest where it needs to."""

    key: str = ""
    """The rule block's key, and the ``cloud.provider`` of its plans."""
    sdk_module: str | None = None
    """A module that must import when a rule has the hub make identities (None: nothing)."""
    extra: str = ""
    """The package extra that installs :attr:`sdk_module` (``pip install 'cloudidentity-spawner[<extra>]'``)."""
    backends: tuple[str, ...] = ()
    """The backends (:func:`.backend_for`) that make this provider's identities; an account records
    a hub-made identity as ``<backend>:<name>`` (``aws:<role ARN>``, ``eks:<association>``)."""

    def parse(self, block: Any, where: str, forbidden: set[str], trusted_claims: Collection[str]) -> Any:
        """Validate the rule block at start-up; return its settings (with ``mode`` and
        ``hub_made``), or raise ConfigError naming *where* and the key."""
        raise NotImplementedError

    def plan(self, settings: Any, context: Mapping[str, Any], scope: str, owner: str, namespace: str,
             service_account: str) -> tuple[dict[str, str], Any]:
        """``(ServiceAccount annotations, CloudPlan)`` for one user (pure: the same input, the same plan)."""
        raise NotImplementedError

    def named_templates(self, settings: Any, where: str, rule: str, scope: str) -> list[Any]:
        """The block's templates that name an identity or what it reaches (:mod:`..overlap`)."""
        raise NotImplementedError

    def check(self, settings: Any, identity_settings: Any, where: str) -> None:
        """Start-up checks beyond the block (hub settings it needs); ConfigError if wrong."""

    def managed_places(self, settings: Any) -> list[str]:
        """Prefixes of the identities the block has the hub make (role ARN prefixes, account
        e-mail suffixes): how an account made before it recorded its identity is recognised."""
        return []

    def search_places(self, settings: Any) -> list[tuple[str, str]]:
        """``(backend, place)`` pairs where ``gc`` lists the hub-made identities of this block."""
        return []

    def describe(self, cloud: Any, plan: Any) -> str:
        """What the user's server will run as, for the spawn form and progress page."""
        return str(cloud.identity)

    def pod_labels(self, plan: Any) -> dict[str, str]:
        """Labels the pod needs (e.g. for a webhook that selects pods by label)."""
        return {}

    def pin(self, pod: Any, plan: Any, webhook_parts: bool) -> None:
        """Give the pod what the identity needs, last (after profiles and hooks): environment,
        projected tokens. *webhook_parts*: also what a cloud's own webhook would add (IRSA,
        EKS Pod Identity), so a pod made before the webhook's cache caught up still works."""

    async def revoke(self, backend: Any, kind: str, name: str, owner: str | None, hub: str,
                     annotations: Mapping[str, str], account: tuple[str, str] | None) -> bool:
        """Delete the hub-made identity ``<kind>:<name>`` made for *owner* on *hub* (None: any
        owner, for ``gc``), with what *annotations* record of its grants; with *account*
        (``(namespace, name)``), a shared identity only stops trusting that account while others
        use it. Never one without the hub's markers. False if it was not there or not ours."""
        raise NotImplementedError(f"provider {self.key!r} has no backend")

    def place_of(self, kind: str, name: str) -> tuple[str, str] | None:
        """Where the hub-made identity ``<kind>:<name>`` was made, as :meth:`search_places` names places."""
        return None
