"""CloudIdentitySpawner: KubeSpawner that runs each user's pods under their own cloud identity.

The spawner stays thin: it filters the profile form by the user's groups
(:mod:`.profiles`), runs the identity step (:mod:`.provisioner`) after the chosen
profile is applied, pins the pod to the result (:mod:`.pinning`), and deletes the
user's account with the user.

It overrides these KubeSpawner internals, checked against the KubeSpawner
versions in ``pyproject.toml``: ``_make_create_pod_request`` (re-create an account
deleted behind the cache), ``_ensure_namespace`` and ``_get_reflector_key`` /
``reflectors`` (user namespaces and our ServiceAccount cache),
``_get_initialized_profile_list``, ``_render_options_form`` and
``_sorted_dict_values`` (profiles by group).
"""

from __future__ import annotations

import asyncio
import html
import time
from typing import Any

from jupyterhub.utils import maybe_future
from kubernetes_asyncio.client.exceptions import ApiException
from kubespawner import KubeSpawner
from kubespawner.clients import shared_client
from traitlets import Bool, Float, Integer, default

from .claims import Claims, hub_groups, user_claims
from .config import CloudIdentity
from .errors import ConfigError, IdentityError, SpawnRefused
from .kube import ServiceAccountReflector
from .pinning import apply_plan, pinning_hook
from .plan import IdentityPlan, thaw
from .profiles import ProfileNotAllowed, check_selection, visible_profiles
from .provisioner import IdentityProvisioner, api_message, identity_sentence, plan_for, server_namespaces
from .retry import Backoff, describe
from .startup import guard_jupyterhub_startup
from .token_keeper import keeper_for


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
        self._storage_token: dict[str, str] | None = None  # the server's Secret, audience and scope
        self._creating_pod = False
        self._identity_progress: list[str] = []
        self._identity_step_done = asyncio.Event()
        # Fail on a bad rule set now, naming the rule and key, not at the first spawn.
        self.compiled_rules  # noqa: B018

    def start(self):
        # A fresh identity step per start: progress() waits for this one, not an earlier one.
        self._identity_progress = []
        self._identity_step_done = asyncio.Event()
        return self._start_or_clean_up(super().start())

    async def _start_or_clean_up(self, started: Any) -> Any:
        try:
            return await started
        except BaseException:
            await self._forget_storage_token()  # a failed start keeps no token
            raise

    async def stop(self, now: bool = False) -> None:
        await super().stop(now)
        if not self._creating_pod:  # KubeSpawner stops an old pod of the same name before it creates this one
            await self._forget_storage_token()

    async def poll(self) -> int | None:
        status = await super().poll()
        stored = self._storage_token
        if status is not None and stored:
            # It stopped by itself (evicted, deleted): JupyterHub calls no stop, so the token goes now.
            await self._forget_storage_token()
        elif status is None and stored and (self.user.name, self.name) not in keeper_for(self).tasks:
            keeper = keeper_for(self)
            if not keeper.stopped_for_this_login(self, await self.user.get_auth_state()):
                # The hub restarted while the server ran, or the user logged in again: renew from now on.
                keeper.keep(self, shared_client("CoreV1Api"), stored, stored["secret"], time.time() + 5,
                            self.k8s_api_request_timeout)
        return status

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self._storage_token:
            state["storage_token"] = thaw(self._storage_token)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        stored = state.get("storage_token")
        if isinstance(stored, dict) and all(isinstance(stored.get(k), str) for k in ("secret", "audience", "scope")):
            self._storage_token = {k: stored[k] for k in ("secret", "audience", "scope")}
            if isinstance(stored.get("rucio"), dict):
                self._storage_token["rucio"] = {k: str(v) for k, v in stored["rucio"].items()}

    def clear_state(self) -> None:
        super().clear_state()
        self._storage_token = None

    async def _forget_storage_token(self) -> None:
        stored = self._storage_token
        if not stored:
            return
        try:
            await keeper_for(self).stop(self, shared_client("CoreV1Api"), stored["secret"], self.k8s_api_request_timeout)
            self._storage_token = None
        except Exception as e:  # the server stops anyway; gc finds the Secret
            detail = api_message(e) if isinstance(e, ApiException) else describe(e)
            self.log.error("cloudidentity: could not delete %s's storage-token Secret %s/%s: %s; gc removes it",
                           self.user.name, self.namespace, stored["secret"], detail)

    async def _start_storage_token(self, plan: IdentityPlan) -> str | None:
        """Get the user's storage token into the server's Secret (rules with ``tokens``)."""
        if plan.tokens is None:
            return None
        try:
            name = await keeper_for(self).start(self, shared_client("CoreV1Api"), plan, self.k8s_api_request_timeout)
        except IdentityError as e:
            self.log.error("cloudidentity: spawn refused for %s: storage token: %s", self.user.name, e.admin_detail)
            raise SpawnRefused(e.user_message) from None
        except ApiException as e:
            self.log.error("cloudidentity: spawn refused for %s: cannot write the storage-token Secret: %s",
                           self.user.name, api_message(e))
            raise SpawnRefused("Your storage token could not be stored for your server; ask your hub admin.") from None
        self._storage_token = {"secret": name, **thaw(plan.tokens)}
        return name

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
        backoff = Backoff(self.identity_api_retries, self.identity_api_backoff, self.identity_api_backoff_max)
        return IdentityProvisioner(self, self, backoff, self.k8s_api_request_timeout)

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
            list(claims.groups) if claims else hub_groups(self.user)
        )
        return claims

    def _get_initialized_profile_list(self, profile_list: list):
        groups = self._profile_groups
        if groups is None:
            groups = hub_groups(self.user)
        return self._visible_for(profile_list, groups)

    def _visible_for(self, profile_list: list, groups: list[str]) -> list[Any]:
        """KubeSpawner's initialized profile list, with only what *groups* allow."""
        return visible_profiles(super()._get_initialized_profile_list(profile_list), groups)

    async def _profile_list_for_user(self) -> list[Any]:
        """The configured profile list (a callable's result for this spawner), in order."""
        profiles = self.profile_list
        if callable(profiles):
            profiles = await maybe_future(profiles(self))
        return self._sorted_dict_values(profiles) or []

    @default("options_form")
    def _options_form_default(self):
        if not self.profile_list:
            return ""
        return self._render_form_for_user

    async def _render_form_for_user(self, spawner: Any) -> str:
        """Render the profile form with only what this user's groups allow (every time:
        group membership can change between visits), under a line saying which cloud identity
        the server will run as - or, when the user has none, why, and no Start button."""
        claims = await self._claims_for_profiles()
        profiles = await self._profile_list_for_user()
        line, default = await self._identity_line(claims)
        return line + self._render_options_form(await self._with_identity_notes(profiles, claims, default))

    async def _with_identity_notes(self, profiles: list[Any], claims: Claims | None, default: str | None) -> list[Any]:
        """The profiles, each that names its own ``identity_rule`` saying what it gives this user:
        another identity than the default (the line above the form), the same, or none and why."""
        if claims is None:
            return profiles
        noted = []
        for profile in profiles:
            rule = profile.get("identity_rule") if isinstance(profile, dict) else None
            if rule:
                try:
                    sentence = identity_sentence(await plan_for(self, self, claims, self.namespace, rule))
                    note = ("The same cloud identity as above." if sentence == default
                            else sentence.replace("Your server will run as", "Runs as", 1))
                except (IdentityError, ConfigError) as e:
                    note = e.user_message if isinstance(e, IdentityError) else "Its cloud identity is misconfigured."
                except Exception as e:  # e.g. an identity_resolver: the spawn will say
                    self.log.warning("cloudidentity: cannot preview profile %s for %s: %s", rule, self.user.name, describe(e))
                    note = ""
                # KubeSpawner's form does not escape descriptions (operators may write HTML): ours is text.
                profile = {**profile, "description": " ".join(p for p in (profile.get("description", ""), html.escape(note)) if p)}
            noted.append(profile)
        return noted

    async def _identity_line(self, claims: Claims | None) -> tuple[str, str | None]:
        """HTML: the identity the default profile gives (no I/O beyond the user's stored login),
        and its sentence (None when the user gets none)."""
        try:
            if claims is None:
                claims = await user_claims(self, self.user)
            plan = await plan_for(self, self, claims, self.namespace)
        except (IdentityError, ConfigError) as e:
            message = e.user_message if isinstance(e, IdentityError) else "This hub's cloud identity configuration has an error."
            # No Start button: the spawn would be refused for the same reason.
            return (f'<div class="alert alert-warning cloudidentity-identity" role="alert">{html.escape(message)}</div>'
                    '<script>document.addEventListener("DOMContentLoaded", function () {'
                    ' document.querySelectorAll(\'#spawn_form [type="submit"]\').forEach(function (b) { b.remove(); }); });'
                    '</script>'), None
        except Exception as e:  # e.g. an identity_resolver that fails: the form still shows; the spawn will say
            self.log.warning("cloudidentity: cannot preview the identity of %s: %s", self.user.name, describe(e))
            return "", None
        sentence = identity_sentence(plan)
        return f'<div class="alert alert-info cloudidentity-identity" role="status">{html.escape(sentence)}</div>', sentence

    async def _selected_profile(self) -> Any:
        """Check the submitted profile, choices and values against what the user may see
        (``_profile_groups`` must be set)."""
        profile_list = await self._profile_list_for_user()
        visible = self._get_initialized_profile_list(profile_list)
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
        self._identity_progress.append(identity_sentence(plan))
        secret = await self._start_storage_token(plan)
        apply_plan(self, plan, self._configured_automount)
        # After the profile's kubespawner_override, which may set its own modify_pod_hook.
        self.modify_pod_hook = pinning_hook(self.modify_pod_hook, plan, self._configured_automount, self.irsa_pod_spec,
                                            secret)

    async def prepare_identity(self) -> IdentityPlan | None:
        """Make what is missing of the user's identity now, before their first spawn (see
        :func:`cloudidentity_spawner.hooks.prepare_at_login`): the ServiceAccount and cloud identity
        of the profile the user last chose (else the default profile). Only a missing account is
        made - nothing is revoked or changed, and nothing is done while any server of the user
        runs or starts - so the spawn finds it made and right. None when nothing was done. Raises
        IdentityError when no rule gives the user an identity, SpawnRefused when it cannot be made."""
        if _any_server_busy(self.user):
            return None
        claims = await user_claims(self, self.user)
        rule = None
        if self.profile_list:  # the profile the user last chose (JupyterHub keeps it), else the default
            visible = self._visible_for(await self._profile_list_for_user(), list(claims.groups))
            try:
                profile = check_selection(visible, self.user_options or {}, True)
            except ProfileNotAllowed:
                profile = check_selection(visible, {}, True)
            rule = (profile or {}).get("identity_rule")
        await plan_for(self, self, claims, self.namespace, rule)  # no rule for the user: nothing to make, the spawn says why
        if self.enable_user_namespaces:
            await self._ensure_namespace()
        cache = await self._service_account_cache()
        provisioner = self._provisioner()
        provisioner.show_progress = lambda message: None  # not on a spawn's progress page
        return await provisioner.prepare(self.namespace, cache, rule, claims, counted=False, only_new=True)

    async def _make_create_pod_request(self, pod: Any, request_timeout: float) -> bool:
        """Create the pod; if the cluster says its ServiceAccount is gone (deleted after the
        watch cache last saw it, e.g. by ``kubectl delete sa``), make the account again and
        let KubeSpawner's backoff retry the pod, instead of failing the spawn."""
        self._creating_pod = True
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
        finally:
            self._creating_pod = False

    async def delete_forever(self) -> None:
        """Delete the user's own ServiceAccounts when the user is deleted.

        JupyterHub calls this for the default server when the user is deleted (then the
        user's accounts in every namespace go), and for a named server when only that server
        is deleted: the user's servers share one account per namespace, so a named server's
        deletion keeps it unless no other server of the user uses that namespace.
        """
        await super().delete_forever()
        if not self.name:
            await self._provisioner().forget_user(self.user.name, self.namespace)
        elif self.enable_user_namespaces and self.namespace not in server_namespaces(self, include_self=False):
            await self._provisioner().forget_user(self.user.name, self.namespace, everywhere=False,
                                                  why=f"named server {self.name} deleted")
        else:
            self.log.info("cloudidentity: named server %s/%s deleted; keeping the user's ServiceAccount in %s, which their "
                          "other servers use", self.user.name, self.name, self.namespace)


def _any_server_busy(user: Any) -> bool:
    """Whether any server of the user runs or is starting or stopping."""
    return any(s.active or s.pending for s in list((getattr(user, "spawners", None) or {}).values()))


# Last, so a check that runs at once (a hub already configured) finds this module complete.
guard_jupyterhub_startup()
