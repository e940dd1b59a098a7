"""The provider interface: what a kind of cloud identity tells the rest of the package.

A provider owns one rule block (``"aws": {...}``, ``"s3_sts": {...}``): it validates the block
at start-up, renders it into a plan for one user, names what the plan's identity and grants
may collide with, says where hub-made identities live (for ``status`` and ``gc``), tells the
user what their server runs as, and gives the pod what the cloud needs (labels, environment,
projected tokens) after every profile and hook had its say.

The four built-in providers (``aws``, ``gcp``, ``azure``, ``s3_sts``) implement it
(:mod:`.builtin`); a site adds its own without forking by registering a subclass of
:class:`Provider` under the entry-point group ``cloudidentity_spawner.providers``, the name
being its rule block's key, e.g. in the site package's ``pyproject.toml``:

    [project.entry-points."cloudidentity_spawner.providers"]
    mystore = "mysite.identity:MyStoreProvider"

Planning is pure (no network). A provider whose rules have the hub make identities also
builds the backend that makes, lists and deletes them (:meth:`Provider.make_backend`, shared per
hub process by :func:`.backend_for`), and says how the spawn path and ``gc`` use it: make the
identity (:meth:`Provider.ensure`), take back grants a plan dropped, wait until the identity
works, revoke it, find what outlived its account. A backend has ``hub_made(place, hub)`` (the
hub-made identities in a place, as ``{"identity": "<kind>:<name>", "created": datetime | None}``)
and ``present(name)`` (whether one exists), which ``status`` and ``gc`` call. A plan is the
hub's to make when its ``cloud.mode`` is ``managed`` (or ``principal``); the account then records
it as ``<key>:<identity>``, and it is revoked through :meth:`Provider.revoke` when the plan moves
on, the user is deleted, or ``gc`` finds it unrecorded. A provider may also serve a route of the
notebook's credentials endpoint (:meth:`Provider.credentials_routes`): it answers only an
authenticated GET from a caller allowed to run code in that server, whatever the handler checks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

ENTRY_POINT_GROUP = "cloudidentity_spawner.providers"


@dataclass(frozen=True)
class Grant:
    """One member of one binding (role and condition title) in a resource's access policy, made
    by backend *kind*."""

    kind: str
    resource: str
    role: str
    title: str
    member: str


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
    annotations: tuple[str, ...] = ()
    """ServiceAccount annotations outside this package's prefix that the provider's plans write
    (``eks.amazonaws.com/role-arn``): removed from an account whose plan no longer sets them."""

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

    def account_identity(self, annotations: Mapping[str, str]) -> str | None:
        """The identity (``<kind>:<name>``) an account's annotations give its pods, when the hub
        did not make it (the account then records nothing else), or None."""
        return None

    def made_before_records(self, annotations: Mapping[str, str], managed_places: Collection[str]) -> str | None:
        """For an account made before accounts recorded their hub-made identity: the identity
        its annotations point at when it lies in one of *managed_places* (:meth:`managed_places`
        of every rule), or None. Providers newer than the record return None."""
        return None

    def has_object(self, kind: str, name: str) -> bool:
        """Whether the hub-made ``<kind>:<name>`` is an object whose existence ``status`` can check
        (a grant to a principal is not: its grants are all there is of it)."""
        return True

    def completed(self, plan: Any, annotations: Mapping[str, str]) -> Any:
        """*plan* with what the cloud chose when it made the identity, as the account records it
        (an Azure identity's client id), to compare an account with its plan outside a spawn."""
        return plan

    # What the spawn path and gc call for hub-made identities (``settings.hub_made``).

    def backend_kind(self, cloud: Any) -> str:
        """The backend that makes a plan's identity (one of :attr:`backends`); *cloud* is a plan's
        ``cloud`` or a rule block's settings (both have ``mode``)."""
        return self.key

    def make_backend(self, settings: Any, kind: str) -> Any:
        """A new backend *kind* for the hub's *settings* (a ``CloudIdentity``); called once per
        kind and client settings per process. None: this provider makes no identities."""
        return None

    def backend_key(self, settings: Any, kind: str) -> Any:
        """What distinguishes one backend *kind* from another in a process (its client settings)."""
        return kind

    async def ensure(self, backend: Any, plan: Any, recheck: bool, namespaces: Collection[str]) -> tuple[str | None, Any]:
        """Make or update the plan's identity before its ServiceAccount points at it; *recheck*:
        ask the cloud even if a cache says it is there; *namespaces*: every namespace the user's
        servers use (user namespaces), whose accounts must all stay trusted. Returns
        ``(outcome, plan)``: ``created``/``updated``/``unchanged`` and the plan completed with what
        the cloud chose."""
        return await backend.ensure(plan, recheck=recheck), plan

    def dropped_grants(self, annotations: Mapping[str, str], plan: Any) -> list[Any]:
        """Grants an account's identity was given (as its *annotations* record them) that *plan*
        keeps the identity but no longer wants: taken back before the new pod starts."""
        return []

    async def remove_grants(self, backend: Any, identity: str, grants: list[Any]) -> None:
        """Take back :meth:`dropped_grants` from *identity* (the plan's ``cloud.identity``)."""

    async def settle(self, step: Any, plan: Any, before: Mapping[str, Any] | None) -> None:
        """Wait (bounded) until the pod can use its identity, after the account is written;
        *before* is the account as it was. *step* has ``settings``, ``log``, ``show_progress``
        and ``backend(kind)``. Raise IdentityError if it does not become usable."""

    def account_of(self, kind: str, name: str) -> tuple[str, str] | None:
        """The one ServiceAccount (``(namespace, name)``) a hub-made identity names (an EKS Pod
        Identity association), so ``gc`` leaves it while pods run under that account."""
        return None

    def recorded_grants(self, grants: list[Any]) -> dict[str, str]:
        """Annotations recording *grants* as :meth:`revoke` reads them (``gc`` found them on an
        identity no account records, and removes them with it)."""
        return {}

    async def orphaned_grants(self, blocks: list[Any], backend: Any, made_here: Collection[str],
                              deleting: Mapping[str, list[Any]], namespaces: Collection[str]) -> tuple[list[Any], list[tuple[str, str]]]:
        """Grants in the places the rules' *blocks* grant whose member is gone (``gc``): an
        identity this hub made (*made_here*) that was deleted, or with *namespaces* the
        principal of a ServiceAccount of those namespaces. Grants of identities ``gc`` is
        *deleting* are appended to their list. Returns ``([(Grant, (namespace, name) or None, reason)],
        [(what could not be read, why)])``: with an account, ``gc`` removes the grant only if that
        account does not exist."""
        return [], []

    async def remove_grant(self, backend: Any, grant: Any) -> bool:
        """Remove one grant :meth:`orphaned_grants` found; False if it was gone."""
        raise NotImplementedError(f"provider {self.key!r} removes no grants")

    def credentials_routes(self) -> list[tuple[str, Any]]:
        """``(name, tornado handler)`` pairs the notebook's credentials endpoint serves at
        ``/api/cloudcreds/<name>`` (runs in the user's server: import nothing heavy)."""
        return []
