"""CloudIdentitySpawner: KubeSpawner that runs each user's pods under their own cloud identity.

The spawner stays thin: it asks the pure core for the user's plan, asks
:mod:`.kube` to make the ServiceAccount match, and pins the pod to it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from typing import Any

from jupyterhub.utils import maybe_future
from kubernetes_asyncio.client.exceptions import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from prometheus_client import Counter, Histogram
from tornado.web import HTTPError
from traitlets import Bool, Float, Integer, default

from .claims import Claims
from .config import CloudIdentity, user_claims
from .errors import ConfigError, IdentityError
from .kube import RetryPolicy, ServiceAccountReflector, ServiceAccounts, bindings_to_remove, describe, identity_to_revoke, is_retryable
from .plan import RULE_LABEL, SCOPE_LABEL, IdentityPlan
from .profiles import ProfileNotAllowed, check_selection, visible_profiles
from .providers import aws, gcp


class SpawnRefused(HTTPError):
    """Fails one spawn; JupyterHub shows ``jupyterhub_message`` on the spawn page.

    An HTTPError, because JupyterHub passes those (and their message) through to
    the spawn form when a spawn fails at once; other exceptions become a generic
    "Unhandled error starting server".
    """

    def __init__(self, user_message: str, status_code: int = 403):
        super().__init__(status_code)
        self.jupyterhub_message = user_message

    def __str__(self) -> str:
        return self.jupyterhub_message


def api_message(error: ApiException) -> str:
    """The API server's own message (RBAC's names the verb, resource and namespace)."""
    try:
        return json.loads(error.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{error.status} {error.reason}"


def audit_record(plan: IdentityPlan, spawner_name: str, outcome: str, cloud_outcome: str | None = None) -> dict[str, Any]:
    """The one structured line logged per spawn decision (it doubles as the audit trail)."""
    return {
        "event": "cloudidentity.spawn",
        "user": plan.user,
        "server": spawner_name,
        "groups": list(plan.groups),
        "group": plan.group,
        "rule": plan.rule,
        "scope": plan.scope,
        "service_account": f"{plan.service_account.namespace}/{plan.service_account.name}",
        "service_account_change": outcome,
        "cloud_provider": plan.cloud.provider if plan.cloud else None,
        "cloud_identity": plan.cloud.identity if plan.cloud else None,
        "cloud_identity_change": cloud_outcome,
    }


# Exported on JupyterHub's /hub/metrics (the default prometheus registry).
SPAWN_DECISIONS = Counter(
    "cloudidentity_spawn_decisions",
    "Cloud identity decisions at spawn time, by outcome (ok or refused), scope and provider",
    ["outcome", "scope", "provider"],
)
SERVICE_ACCOUNT_CHANGES = Counter(
    "cloudidentity_service_account_changes",
    "What spawns did to ServiceAccounts: created, patched or unchanged",
    ["change"],
)
IDENTITY_STEP_SECONDS = Histogram(
    "cloudidentity_identity_step_seconds",
    "Time a spawn spent resolving and ensuring its identity (cloud and Kubernetes calls included)",
    ["outcome"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60),
)


class IdentityProvisioner:
    """Plan + ensure + log, shared by the spawner and the plain ``pre_spawn_hook``."""

    def __init__(self, settings: CloudIdentity, spawner: Any, retry: RetryPolicy, request_timeout: float):
        self.settings = settings
        self.spawner = spawner
        self.log = spawner.log
        self.accounts = ServiceAccounts(shared_client("CoreV1Api"), retry, request_timeout, spawner.log)

    async def prepare(
        self, namespace: str, cache: Any = None, rule_name: str | None = None, claims: Claims | None = None
    ) -> IdentityPlan:
        """Resolve and ensure; on failure log one admin line and raise :class:`SpawnRefused`.

        *cache* is a ServiceAccount watch cache (a mapping of ``namespace/name``
        to the account) or None; *claims*, if the caller has read them already.
        """
        started = time.perf_counter()
        try:
            plan = await self._prepare(namespace, cache, rule_name, claims)
        except SpawnRefused:
            IDENTITY_STEP_SECONDS.labels("refused").observe(time.perf_counter() - started)
            SPAWN_DECISIONS.labels("refused", "", "").inc()
            raise
        IDENTITY_STEP_SECONDS.labels("ok").observe(time.perf_counter() - started)
        SPAWN_DECISIONS.labels("ok", plan.scope, plan.cloud.provider if plan.cloud else "none").inc()
        return plan

    async def _prepare(self, namespace: str, cache: Any, rule_name: str | None, claims: Claims | None) -> IdentityPlan:
        who = self.spawner.user.name + (f"/{self.spawner.name}" if self.spawner.name else "")
        plan = None
        try:
            if claims is None:
                claims = await user_claims(self.settings, self.spawner.user)
            plan = await self.settings.plan_for(self.spawner, claims, namespace, rule_name)
            existing = await self.accounts.current(plan, cache)
            cloud_outcome = None
            if plan.cloud is not None and plan.cloud.mode == "managed":
                # The cloud identity first: the ServiceAccount must not point at a role that is not there yet.
                cloud_outcome = await self.settings.cloud_backend(plan.cloud.provider).ensure(plan)
            revoked: list[str] = []

            async def revoke_what_it_no_longer_plans(found: Any) -> None:
                # Before the new pod exists: the account's token must not reach what it no longer plans.
                # Also called with what a create that met 409 found, so a stale cache cannot skip it.
                old = identity_to_revoke(found, plan, self.settings.managed_places)
                if old:
                    await self.refuse_while_other_pods_use(plan, old)
                    if await self.revoke(old, plan.owner, found["annotations"]):
                        revoked.append(old)
                stale = bindings_to_remove(found, plan)
                if stale:
                    await self.revoke_bindings(plan.cloud.identity, stale)

            await revoke_what_it_no_longer_plans(existing)
            outcome = await self.accounts.ensure(plan, existing, before_change=revoke_what_it_no_longer_plans)
            if plan.cloud is not None and plan.cloud.provider == "gcp":
                await self.await_activation(plan, existing)
        except IdentityError as e:
            self.log.error("cloudidentity: spawn refused for %s: %s", who, e.admin_detail)
            raise SpawnRefused(e.user_message) from None
        except ConfigError as e:
            self.log.error("cloudidentity: spawn refused for %s: configuration error: %s", who, e)
            raise SpawnRefused("This hub's cloud identity configuration has an error; ask your hub admin.") from None
        except Exception as e:
            if not (isinstance(e, ApiException) or is_retryable(e)):
                raise
            # Kubernetes API failures (after retries); cloud failures arrive as IdentityError.
            rule = plan.rule if plan else "?"
            if isinstance(e, ApiException) and e.status == 403:
                self.log.error(
                    "cloudidentity: spawn refused for %s (rule %s): the hub's Kubernetes permissions do not allow it: "
                    "%s. Grant the hub what examples/z2jh/rbac.yaml grants.", who, rule, api_message(e),
                )
                raise SpawnRefused(
                    "Your cloud identity could not be set up: the hub is not allowed to manage it; ask your hub admin."
                ) from None
            self.log.error("cloudidentity: spawn refused for %s (rule %s): Kubernetes API failed: %s", who, rule, describe(e))
            raise SpawnRefused(
                "Your cloud identity could not be set up because the cluster did not answer; "
                "try again in a minute, or ask your hub admin.",
                503,
            ) from None
        SERVICE_ACCOUNT_CHANGES.labels(outcome).inc()
        record = audit_record(plan, self.spawner.name, outcome, cloud_outcome)
        if revoked:
            record["revoked_cloud_identity"] = revoked[0]
        self.log.info("cloudidentity audit %s", json.dumps(record, sort_keys=True))
        return plan

    async def await_activation(self, plan: IdentityPlan, before: Any) -> None:
        """Wait (bounded) until the pod can use its Google account: after a new Workload
        Identity grant (``gcp_activation_seconds``; Google: IAM changes take minutes), and after
        the account's ``iam.gke.io/gcp-service-account`` annotation was just set or changed
        (``gcp_annotation_settle_seconds``; GKE's metadata server learns it from its own watch)."""
        deadlines = []
        if plan.cloud.mode == "managed":
            since = self.settings.cloud_backend("gcp").activation_pending.get(plan.cloud.identity)
            if since is not None:
                deadlines.append(since + max(0.0, min(self.settings.gcp_activation_seconds, 900.0)))
        annotations = (before or {}).get("annotations") or {}
        if annotations.get(gcp.GSA_ANNOTATION) != plan.cloud.identity:
            deadlines.append(time.monotonic() + max(0.0, min(self.settings.gcp_annotation_settle_seconds, 300.0)))
        if not deadlines or max(deadlines) <= time.monotonic():
            return
        deadline, started = max(deadlines), time.monotonic()
        progress = getattr(self.spawner, "_identity_progress", None)
        if progress is not None:
            long_wait = len(deadlines) > 1 or plan.cloud.mode == "managed"
            progress.append(
                "Your new Google identity is being activated (this can take a few minutes)." if long_wait
                else "Your server is being connected to its Google identity."
            )
        check = self.settings.gcp_activation_check
        while True:
            if check is not None and await self._check_passes(check, plan, deadline):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if check is None:
                    break
                raise IdentityError(
                    "Google has not activated your new cloud identity yet; try again in a few minutes.",
                    f"{plan.cloud.identity} not usable from {plan.service_account.namespace}/{plan.service_account.name} "
                    f"{time.monotonic() - started:.0f} s into the wait (gcp_activation_seconds, "
                    "gcp_annotation_settle_seconds); the next spawn starts at once",
                )
            await asyncio.sleep(min(1.0 if check is not None else remaining, remaining))
        self.log.info("cloudidentity: waited %.1f s for %s to become usable for %s%s", time.monotonic() - started,
                      plan.cloud.identity, plan.user, "" if check is None else " (check passed)")
        if plan.cloud.mode == "managed":
            pending = self.settings.cloud_backend("gcp").activation_pending
            if pending.get(plan.cloud.identity, float("inf")) <= started:
                pending.pop(plan.cloud.identity, None)  # waited for; a grant added since keeps its own entry

    async def _check_passes(self, check: Any, plan: IdentityPlan, deadline: float) -> bool:
        """Run the operator's check without blocking the hub or outliving the wait; an error is "not yet"."""
        try:
            result = await asyncio.wait_for(asyncio.to_thread(check, plan), max(0.1, deadline - time.monotonic()))
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, max(0.1, deadline - time.monotonic()))
            return bool(result)
        except Exception as e:
            self.log.debug("cloudidentity: gcp_activation_check for %s: %s", plan.cloud.identity, describe(e))
            return False

    async def refuse_while_other_pods_use(self, plan: IdentityPlan, identity: str) -> None:
        """One ServiceAccount carries one identity: revoking it under a pod that still runs
        (the user's other named server, another member of a group) would break that pod, and
        sharing it would leave the old identity reachable. So the spawn waits its turn."""
        sa = plan.service_account
        pods = await self.accounts.retry.run(
            lambda: self.accounts.api.list_namespaced_pod(
                sa.namespace, field_selector=f"spec.serviceAccountName={sa.name}", _request_timeout=self.accounts.request_timeout
            ),
            f"list pods under {sa.namespace}/{sa.name}",
            self.log,
        )
        others = sorted(
            p.metadata.name for p in pods.items
            if p.metadata.name != getattr(self.spawner, "pod_name", None) and not p.metadata.deletion_timestamp
        )
        if others:
            raise IdentityError(
                "Your server cannot start yet: another server runs under the same account with your previous cloud "
                f"identity ({', '.join(others)}). Stop it first, or ask your hub admin.",
                f"not revoking {identity} from ServiceAccount {sa.namespace}/{sa.name} for rule {plan.rule!r}: "
                f"pods {others} still run under it",
            )

    async def revoke(self, identity: str, owner: str, annotations: dict[str, str]) -> bool:
        """Delete the hub-managed identity ``aws:<arn>`` / ``gcp:<email>`` made for *owner*
        (with the bindings recorded in *annotations*); never one without our markers."""
        provider, _, name = identity.partition(":")
        try:
            backend = self.settings.cloud_backend(provider)
            if provider == "aws":
                return await backend.delete(name, owner, self.settings.hub_name)
            bindings = json.loads(annotations.get(gcp.BINDINGS_ANNOTATION, "[]"))
            return await backend.delete(name, owner, self.settings.hub_name, bindings)
        except IdentityError:
            raise
        except Exception as e:  # the SDKs' own errors: fail closed, saying what could not be revoked
            raise IdentityError(
                "Your server was not started: your previous cloud identity could not be revoked; ask your hub admin.",
                f"revoking {identity} (no longer planned for {owner}) failed: {type(e).__name__}: {e}",
            ) from None

    async def revoke_bindings(self, email: str, bindings: list[list[str]]) -> None:
        try:
            await self.settings.cloud_backend("gcp").remove_bindings(email, bindings)
        except Exception as e:
            raise IdentityError(
                "Your server was not started: access you no longer have could not be revoked; ask your hub admin.",
                f"removing bindings {bindings} of {email} (no longer planned) failed: {type(e).__name__}: {e}",
            ) from None

    async def forget_user(self, username: str, namespace: str) -> None:
        """Delete the user's own ServiceAccounts and the managed cloud identities they pointed at."""
        deleted = await self.accounts.delete_user_accounts(username, namespace)
        owner = f"user:{username}"
        for name, annotations in deleted:
            record = {"event": "cloudidentity.delete", "user": username, "service_account": f"{namespace}/{name}"}
            role_arn = annotations.get(aws.ROLE_ARN_ANNOTATION)
            if role_arn and self.settings.manages("aws"):
                record["cloud_identity"] = role_arn
                record["cloud_identity_deleted"] = await self.settings.cloud_backend("aws").delete(
                    role_arn, owner, self.settings.hub_name
                )
            email = annotations.get(gcp.GSA_ANNOTATION)
            if email and self.settings.manages("gcp"):
                record["cloud_identity"] = email
                record["cloud_identity_deleted"] = await self.settings.cloud_backend("gcp").delete(
                    email, owner, self.settings.hub_name, json.loads(annotations.get(gcp.BINDINGS_ANNOTATION, "[]"))
                )
            self.log.info("cloudidentity audit %s", json.dumps(record, sort_keys=True))


class CloudIdentitySpawner(CloudIdentity, KubeSpawner):
    """KubeSpawner that starts each user's pod under the ServiceAccount their identity rule chooses.

    Before the pod is created (after profiles and ``kubespawner_override`` are
    applied), the user's plan is resolved, the ServiceAccount is created or
    patched, and the pod is pinned to it. Nothing the user submits can choose
    another account: a pinning ``modify_pod_hook``, which KubeSpawner runs after every
    manifest change, sets the pod's ServiceAccount from the plan.
    """

    identity_api_retries = Integer(
        5,
        config=True,
        help="How many times a Kubernetes API call for the identity is tried on 5xx, 429 or timeouts (with jittered exponential backoff).",
    )
    identity_api_backoff = Float(
        0.2,
        config=True,
        help="First retry delay in seconds for identity API calls; doubles per retry, capped at identity_api_backoff_max.",
    )
    identity_api_backoff_max = Float(5.0, config=True, help="Longest delay in seconds between identity API retries.")
    service_account_cache = Bool(
        True,
        config=True,
        help="""
        Keep a watch cache of the ServiceAccounts this package manages (like
        KubeSpawner's pod reflector), so a warm spawn makes no extra Kubernetes
        request. Needs list/watch on serviceaccounts; set False to read the
        account on every spawn instead (one GET; then only get/create/patch/delete
        are needed).
        """,
    )

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # What the operator configured, before any profile override can touch it.
        self._configured_automount = bool(self.automount_service_account_token)
        self._identity_plan: IdentityPlan | None = None
        self._identity_progress: list[str] = []
        self._identity_step_done = asyncio.Event()
        # Fail on a bad rule set now, naming the rule and key, not at the first spawn.
        self.compiled_rules  # noqa: B018

    def start(self):
        # A fresh identity step per start: progress() waits for this one, not an earlier one.
        self._identity_progress = []
        self._identity_step_done = asyncio.Event()
        return super().start()

    async def progress(self):
        """The identity step's messages (a new Google identity activating) first, then KubeSpawner's."""
        sent = 0
        while True:
            for message in self._identity_progress[sent:]:
                yield {"progress": 5, "message": message}
            sent = len(self._identity_progress)
            if self._identity_step_done.is_set():
                break
            try:
                await asyncio.wait_for(self._identity_step_done.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        for message in self._identity_progress[sent:]:
            yield {"progress": 5, "message": message}
        async for event in super().progress():
            yield event

    def _provisioner(self) -> IdentityProvisioner:
        retry = RetryPolicy(self.identity_api_retries, self.identity_api_backoff, self.identity_api_backoff_max)
        return IdentityProvisioner(self, self, retry, self.k8s_api_request_timeout)

    async def plan_identity(self, namespace: str | None = None) -> IdentityPlan:
        """Resolve this spawn's identity plan from the user's login claims (no I/O but auth_state)."""
        claims = await user_claims(self, self.user)
        return await self.plan_for(self, claims, namespace or self.namespace)

    async def _service_account_cache(self):
        """The watch cache of our ServiceAccounts, or None (then each spawn reads its account).

        A cache that cannot start is not fatal: the spawn falls back to reading,
        which fails the spawn cleanly if the API is really down.
        """
        if not self.service_account_cache:
            return None
        # Not KubeSpawner's _start_reflector: with enable_user_namespaces it halts the whole hub
        # (sys.exit) when a cluster-wide watch cannot start; a cache is never worth that.
        key = self._get_reflector_key("serviceaccounts")
        reflector = self.__class__.reflectors.get(key)
        try:
            if reflector is None:
                reflector = self.__class__.reflectors[key] = ServiceAccountReflector(
                    parent=self, namespace=self.namespace, omit_namespace=self.enable_user_namespaces
                )
                await reflector.start()
            await reflector.first_load_future
        except Exception as e:
            if reflector is not None and reflector.first_load_future.done():
                reflector.first_load_future.exception()  # seen here; not "never retrieved" later
            if reflector is not None and self.__class__.reflectors.get(key) is reflector:
                self.__class__.reflectors.pop(key)
            self.log.warning("cloudidentity: ServiceAccount watch cache unavailable (%s); reading accounts directly", describe(e))
            return None
        if reflector.watch_task is None or reflector.watch_task.done():
            # Its watch has stopped: what it holds may be stale. Read this time; the next spawn starts a new one.
            if self.__class__.reflectors.get(key) is reflector:
                self.__class__.reflectors.pop(key)
            self.log.warning("cloudidentity: ServiceAccount watch cache has stopped; reading accounts directly")
            return None
        return reflector.resources

    # -- per-group profiles ------------------------------------------------------

    _profile_groups: list[str] | None = None

    async def _claims_for_profiles(self) -> Claims | None:
        """The login's claims, read once per spawn, or None if they cannot be read (the
        identity step then fails the spawn with the real reason). Profiles are filtered
        by the same normalised groups the rules see (JupyterHub's groups without claims)."""
        try:
            claims = await user_claims(self, self.user)
        except IdentityError:
            claims = None
        self._profile_groups = (
            list(claims.groups) if claims else [getattr(g, "name", g) for g in (getattr(self.user, "groups", None) or [])]
        )
        return claims

    def _get_initialized_profile_list(self, profile_list: list):
        initialized = super()._get_initialized_profile_list(profile_list)
        groups = self._profile_groups
        if groups is None:
            groups = [getattr(g, "name", g) for g in (getattr(self.user, "groups", None) or [])]
        return visible_profiles(initialized, groups)

    @default("options_form")
    def _options_form_default(self):
        if not self.profile_list:
            return ""
        return self._render_form_for_user

    async def _render_form_for_user(self, spawner: Any) -> str:
        """Render the profile form with only what this user's groups allow (every time:
        group membership can change between visits)."""
        await self._claims_for_profiles()
        profile_list = self.profile_list
        if callable(profile_list):
            profile_list = await maybe_future(profile_list(spawner))
        return self._render_options_form(self._sorted_dict_values(profile_list))

    async def _selected_profile(self) -> Any:
        """Check the submitted profile, choices and values against what the user may see
        (``_profile_groups`` must be set)."""
        profile_list = self._sorted_dict_values(self.profile_list)
        if callable(profile_list):
            profile_list = await maybe_future(profile_list(self))
        visible = self._get_initialized_profile_list(profile_list or [])
        try:
            return check_selection(visible, self.user_options or {}, bool(profile_list))
        except ProfileNotAllowed as e:
            self.log.error("cloudidentity: spawn refused for %s: %s", self.user.name, e.admin_detail)
            raise SpawnRefused(e.user_message) from None

    async def load_user_options(self) -> None:
        try:
            await self._load_identity()
        finally:
            self._identity_step_done.set()  # progress() moves on to KubeSpawner's events

    async def _load_identity(self) -> None:
        claims = await self._claims_for_profiles()
        profile = await self._selected_profile()
        await super().load_user_options()
        rule_name = (profile or {}).get("identity_rule")
        if self.enable_user_namespaces:
            # The user's namespace first (KubeSpawner would make it only after this method).
            try:
                await self._ensure_namespace()
            except ApiException as e:
                self.log.error("cloudidentity: spawn refused for %s: cannot create namespace %s: %s",
                               self.user.name, self.namespace, api_message(e))
                raise SpawnRefused("Your server's namespace could not be created; ask your hub admin.") from None
        cache = await self._service_account_cache()
        plan = await self._provisioner().prepare(self.namespace, cache, rule_name, claims)
        self._identity_plan = plan
        apply_plan(self, plan, self._configured_automount)
        # After the profile's kubespawner_override, which may set its own modify_pod_hook.
        self.modify_pod_hook = pinning_hook(self.modify_pod_hook, plan, self._configured_automount, self.irsa_pod_spec)

    async def _make_create_pod_request(self, pod: Any, request_timeout: float) -> bool:
        """Create the pod; if the cluster says its ServiceAccount is gone (deleted after the
        watch cache last saw it, e.g. by ``kubectl delete sa``), make the account again and
        let KubeSpawner's backoff retry the pod, instead of failing the spawn."""
        try:
            return await super()._make_create_pod_request(pod, request_timeout)
        except ApiException as e:
            plan = self._identity_plan
            if plan is None or e.status != 403 or "error looking up service account" not in str(e.body or ""):
                raise
            self.log.warning(
                "cloudidentity: ServiceAccount %s/%s is gone (deleted behind the watch cache); making it again for %s",
                plan.service_account.namespace, plan.service_account.name, self.user.name,
            )
            accounts = self._provisioner().accounts
            try:
                await accounts.ensure(plan, await accounts.current(plan))
            except IdentityError as refused:
                self.log.error("cloudidentity: spawn refused for %s: %s", self.user.name, refused.admin_detail)
                raise SpawnRefused(refused.user_message) from None
            return False

    async def delete_forever(self) -> None:
        """Delete the user's own ServiceAccount when the user is deleted.

        JupyterHub calls this for the default server when the user is deleted, and
        for a named server when only that server is deleted; all of a user's servers
        share one account, so a named server's deletion keeps it.
        """
        await super().delete_forever()
        if self.name:
            self.log.info("cloudidentity: named server %s/%s deleted; keeping the user's ServiceAccount", self.user.name, self.name)
            return
        await self._provisioner().forget_user(self.user.name, self.namespace)


def apply_plan(spawner: Any, plan: IdentityPlan, automount: bool) -> None:
    """Set the spawner's ServiceAccount, token mount, environment and labels from *plan*."""
    spawner.service_account = plan.service_account.name
    spawner.automount_service_account_token = automount
    spawner.environment = {**spawner.environment, **planned_env(plan)}
    spawner.extra_labels = {
        **spawner.extra_labels,
        SCOPE_LABEL: plan.service_account.labels[SCOPE_LABEL],
        RULE_LABEL: plan.service_account.labels[RULE_LABEL],
    }


def planned_env(plan: IdentityPlan) -> dict[str, str]:
    """The environment the plan gives the notebook: the rule's env, and where dask clusters
    started from the notebook find the ServiceAccount (``cloudidentity_spawner.dask``)."""
    return {
        **plan.env,
        "CLOUDIDENTITY_SERVICE_ACCOUNT": plan.service_account.name,
        "CLOUDIDENTITY_NAMESPACE": plan.service_account.namespace,
    }


IRSA_VOLUME = "aws-iam-token"
IRSA_MOUNT_PATH = "/var/run/secrets/eks.amazonaws.com/serviceaccount"


def pin_pod(pod: Any, plan: IdentityPlan, automount: bool, irsa: bool = True) -> None:
    """The last word on the pod's ServiceAccount, token mount and the plan's environment,
    whatever profiles, overrides and hooks said before (and, with *irsa*, the IRSA role)."""
    from kubernetes_asyncio.client.models import V1EnvVar

    pod.spec.service_account_name = plan.service_account.name
    pod.spec.service_account = None
    pod.spec.automount_service_account_token = automount
    env = planned_env(plan)
    notebook = pod.spec.containers[0]
    notebook.env = [e for e in (notebook.env or []) if e.name not in env] + [V1EnvVar(name=k, value=v) for k, v in env.items()]
    role_arn = plan.service_account.annotations.get(aws.ROLE_ARN_ANNOTATION)
    if irsa and role_arn:
        pin_irsa(pod, plan, role_arn)


def pin_irsa(pod: Any, plan: IdentityPlan, role_arn: str) -> None:
    """What EKS's pod-identity webhook adds for the account's role, added by us for the plan's role.

    The webhook looks the ServiceAccount up in its own cache; a pod made right after the
    account was created or re-annotated can miss it (no credentials) or see the old role.
    The webhook leaves alone a container that already has AWS_ROLE_ARN or
    AWS_WEB_IDENTITY_TOKEN_FILE, a mount named ``aws-iam-token`` and a pod volume of that
    name, so nothing is added twice; and the role is the plan's, whatever its cache says.
    """
    from kubernetes_asyncio.client.models import (
        V1EnvVar,
        V1ProjectedVolumeSource,
        V1ServiceAccountTokenProjection,
        V1Volume,
        V1VolumeMount,
        V1VolumeProjection,
    )

    annotations = plan.service_account.annotations
    expiration = int(annotations.get(aws.TOKEN_EXPIRATION_ANNOTATION, "86400"))
    token = V1ServiceAccountTokenProjection(audience="sts.amazonaws.com", expiration_seconds=expiration, path="token")
    volume = V1Volume(name=IRSA_VOLUME, projected=V1ProjectedVolumeSource(sources=[V1VolumeProjection(service_account_token=token)]))
    pod.spec.volumes = [v for v in (pod.spec.volumes or []) if v.name != IRSA_VOLUME] + [volume]
    env = {"AWS_ROLE_ARN": role_arn, "AWS_WEB_IDENTITY_TOKEN_FILE": f"{IRSA_MOUNT_PATH}/token"}
    if annotations.get(aws.STS_REGIONAL_ANNOTATION) == "true":
        env["AWS_STS_REGIONAL_ENDPOINTS"] = "regional"
    for container in [*pod.spec.containers, *(pod.spec.init_containers or [])]:  # the webhook does both
        container.env = [e for e in (container.env or []) if e.name not in env] + [V1EnvVar(name=k, value=v) for k, v in env.items()]
        mounts = [m for m in (container.volume_mounts or []) if m.name != IRSA_VOLUME]
        container.volume_mounts = mounts + [V1VolumeMount(name=IRSA_VOLUME, mount_path=IRSA_MOUNT_PATH, read_only=True)]


def pinning_hook(operator_hook: Any, plan: IdentityPlan, automount: bool, irsa: bool = True) -> Any:
    """A ``modify_pod_hook`` that runs the operator's hook (if any), then pins the pod.

    KubeSpawner calls ``modify_pod_hook`` after ``get_pod_manifest``, so this is the
    only place whose word is last. Wrapping an already wrapping hook unwraps it first.
    """
    if getattr(operator_hook, "_cloudidentity_pin", False):
        operator_hook = operator_hook._operator_hook

    async def modify_pod_hook(spawner: Any, pod: Any) -> Any:
        if operator_hook is not None:
            pod = operator_hook(spawner, pod)
            if inspect.isawaitable(pod):
                pod = await pod
        if spawner.namespace != plan.service_account.namespace:
            raise SpawnRefused("A profile moved your server to another namespace than your cloud identity's; ask your hub admin.")
        pin_pod(pod, plan, automount, irsa)
        return pod

    modify_pod_hook._cloudidentity_pin = True
    modify_pod_hook._operator_hook = operator_hook
    return modify_pod_hook
