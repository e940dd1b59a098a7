"""The operator's identity settings (traitlets), shared by CloudIdentitySpawner and the plain pre_spawn_hook.

Only the settings and the validated rules they compile to: what a spawn does with
them is in :mod:`.provisioner`, the start-up check in :mod:`.startup`.
"""

from __future__ import annotations

from functools import cached_property

from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Float, Integer, List, Unicode
from traitlets.config import Config, LoggingConfigurable

from .claims import DEFAULT_GROUP_CLAIMS
from .rules import IdentityRules


class CloudIdentity(LoggingConfigurable):
    """The identity settings. ``CloudIdentitySpawner`` inherits them, so both
    ``c.CloudIdentitySpawner.identity_rules`` and (for a stock KubeSpawner with
    the ``pre_spawn_hook``) ``c.CloudIdentity.identity_rules`` work."""

    # Any, not List: a wrong type (a string, a dict) gets our message naming the key,
    # instead of being coerced or rejected with a generic TraitError.
    identity_rules = AnyTrait(
        [],
        config=True,
        help="""
        Rules that choose each user's cloud identity; the first rule that matches wins.

        Each rule is a dict with keys `name` (optional), `match` (``{"groups": [...]}``,
        ``{"users": [...]}``, both, or ``{}`` for everyone; shell-style globs such as
        ``"/escape/*"`` allowed), `scope` ("user", "group" or "hub"; default "user"),
        `service_account` (ServiceAccount name template), one of `aws` or `gcp`
        (or neither: ServiceAccount only), `env` (extra environment templates)
        and `adopt` (take over an existing ServiceAccount we did not create).
        Example::

            c.CloudIdentitySpawner.identity_rules = [
                {"name": "atlas", "match": {"groups": ["/escape/atlas"]}, "scope": "group",
                 "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/atlas"}},
                {"name": "everyone", "match": {}, "scope": "user",
                 "aws": {"role_arn": "arn:aws:iam::123456789012:role/jupyterhub/user-{username}"}},
            ]

        Unset (empty), no user matches and every spawn fails with "no cloud identity
        is configured"; a user never silently gets a broader identity.
        """,
    )
    identity_resolver = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""
        Optional callable `(spawner, claims) -> IdentityPlan | None` (may be async) for
        cases rules cannot express. Returning None falls through to `identity_rules`.
        `claims` has `.username`, `.groups` and the raw provider claims in `.values`.
        """,
    )
    hub_name = Unicode(
        "jupyterhub",
        config=True,
        help="""
        A short name for this hub, used in default names ({hub}) and in the tags of
        roles and accounts the hub manages, so several hubs can share one cloud account.
        Example: "atlas-hub". Default: "jupyterhub".
        """,
    )
    trusted_claims = List(
        Unicode(),
        config=True,
        help="""
        Claims that may decide a cloud identity: a `{claims[key]}` in a ServiceAccount
        name, role ARN or name, Google account id or e-mail, bucket prefix or policy
        template must name one of these, or the hub refuses to start naming the rule
        and key. List only claims your identity provider never lets users edit (its
        stable subject id, say: ["sub"]); `name` and often `email` are user-editable,
        and a user who edits one could pick someone else's identity.
        Environment values (`env`) and descriptions may use any claim.
        Default: [] (no claim decides an identity; use {username}).
        """,
    )
    auth_state_claims_key = Unicode(
        None,
        allow_none=True,
        config=True,
        help="""
        The auth_state key that holds the identity provider's claims. Unset, the keys
        OAuthenticator uses are tried in order ("oauth_user" for GenericOAuthenticator,
        "user" for Azure AD, "github_user", ...).
        """,
    )
    claim_groups_keys = List(
        list(DEFAULT_GROUP_CLAIMS),
        config=True,
        help="""
        Claims that list the user's groups, read in order and merged. A key is looked
        up literally first ("wlcg.groups" is one claim) and then as a dotted path
        ("realm_access.roles"). "eduperson_entitlement" values are read as AARC-G002
        group URNs. Default: ["groups", "wlcg.groups", "eduperson_entitlement"].
        """,
    )

    entitlement_authorities = List(
        default_value=None,  # traitlets reads a positional None as []
        allow_none=True,
        config=True,
        help="""
        Authorities whose AARC-G002 group entitlements ("eduperson_entitlement") count as
        group paths: an entitlement "urn:mace:egi.eu:group:escape:atlas:role=member#aai.egi.eu"
        is group "/escape/atlas" when "aai.egi.eu" (its authority) or
        "urn:mace:egi.eu#aai.egi.eu" (namespace#authority) is listed here. Entitlements of any
        other authority keep their namespace and authority
        ("urn:geant:eduteams.org:service:eduteams:group:escape:atlas#eduteams.org") and match
        only rules that name them so - a team someone created elsewhere never becomes your
        VO's group. Unset (None): the login's own issuer (the host name of its "iss" claim, or
        of its stored ID token); [] trusts no authority.
        """,
    )

    aws_client_kwargs = Dict(
        config=True,
        help="""
        Extra arguments for the boto3 IAM client that manages roles, e.g.
        {"region_name": "eu-west-1"} or {"endpoint_url": "http://127.0.0.1:5000"} for a
        test endpoint. Credentials come from the hub pod's own identity as usual.
        Only used by rules with aws.managed.
        """,
    )
    aws_eks_client_kwargs = Dict(
        config=True,
        help="""
        Extra arguments for the boto3 EKS client that manages Pod Identity associations
        (rules with aws.pod_identity), e.g. {"region_name": "eu-west-1"}: the cluster's region.
        Unset, aws_client_kwargs is used.
        """,
    )
    s3_sts_client_kwargs = Dict(
        config=True,
        help="""
        How the hub reaches the object store's IAM API to make the roles of rules with
        s3_sts.managed (Ceph RADOS Gateway, MinIO): boto3 client arguments, e.g.
        {"endpoint_url": "https://s3.example.org", "aws_access_key_id": "...",
        "aws_secret_access_key": "..."}. The account needs the
        store's role capabilities (Ceph: caps "roles=*"). Required by those rules; the
        pods use the rule's own endpoint.
        """,
    )
    aws_max_concurrent_calls = Integer(
        4,
        config=True,
        help="""
        At most this many IAM (and, for Pod Identity, EKS) calls at once from this hub, so a
        class of first-time logins does not trip throttling. Throttled calls are tried again
        with jittered backoff, without holding one of these places while they wait.
        """,
    )
    aws_role_propagation_seconds = Float(
        10.0,
        config=True,
        help="""
        After creating a role, wait this long (0-60 s) before the pod starts: new IAM roles
        take a few seconds before STS lets a pod assume them. The user sees a slower first
        spawn instead of AccessDenied in their first notebook cell. 0 disables the wait.
        """,
    )
    aws_pod_identity_propagation_seconds = Float(
        5.0,
        config=True,
        help="""
        After creating or changing an EKS Pod Identity association, wait this long (0-60 s)
        before the pod starts: AWS documents that associations take a few seconds to take
        effect, and a pod that asks the Pod Identity agent first gets no (or the old)
        credentials. Warm spawns do not wait. 0 disables the wait.
        """,
    )
    gcp_propagation_seconds = Float(
        60.0,
        config=True,
        help="""
        After creating a Google service account, how long (0-600 s) the first spawn keeps
        retrying IAM's "service account ... does not exist" answers while Google's IAM catches
        up (usually seconds). Past it the spawn fails with "try again in a minute" and the next
        spawn carries on. Only accounts this hub just created are retried.
        """,
    )
    gcp_activation_seconds = Float(
        60.0,
        config=True,
        help="""
        After a spawn grants a Kubernetes ServiceAccount its Google account
        (roles/iam.workloadIdentityUser: a first spawn, or a new namespace or name), wait up to
        this long (0-900 s) before the pod starts, showing "Your new Google identity is being
        activated" on the spawn page: Google documents that IAM changes can take minutes to
        take effect, and until then the pod's token exchange is refused (403). Without
        gcp_activation_check the whole time is waited; with it, only until the check passes.
        0 starts the pod at once.
        """,
    )
    gcp_annotation_settle_seconds = Float(
        10.0,
        config=True,
        help="""
        After a spawn sets or changes a ServiceAccount's iam.gke.io/gcp-service-account
        annotation (a first spawn, or a changed Google account, existing ones included), wait
        this long (0-300 s) before the pod starts: GKE's metadata server learns annotations
        from its own watch, and a pod that asks first gets no (or the old) Google identity.
        Ends early when gcp_activation_check passes. 0 starts the pod at once.
        """,
    )
    gcp_activation_check = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""
        Optional callable `(plan) -> bool` (may be async): True once the plan's Google account
        is usable from its Kubernetes ServiceAccount (e.g. a token exchange your platform can
        try). Polled every second during the activation wait; still False after
        gcp_activation_seconds fails the spawn with "try again in a few minutes".
        """,
    )
    gcp_client_factory = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""
        Optional callable returning (iam_admin_v1.IAMClient, resourcemanager_v3.ProjectsClient,
        storage.Client) for hub-managed Google service accounts, for custom endpoints or
        credentials. Unset, the clients use Application Default Credentials (the hub pod's
        own Workload Identity). Only used by rules with gcp.managed.
        """,
    )
    azure_client_factory = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""
        Optional callable taking a subscription id and returning
        (azure.mgmt.msi.ManagedServiceIdentityClient, azure.mgmt.authorization.AuthorizationManagementClient)
        for hub-managed Azure identities, for custom endpoints or credentials. Unset, the
        clients use azure.identity.DefaultAzureCredential (the hub pod's own Workload
        Identity). Only used by rules with azure.managed.
        """,
    )
    azure_max_concurrent_calls = Integer(
        4,
        config=True,
        help="At most this many Azure Resource Manager calls at once from this hub.",
    )
    gcp_max_concurrent_calls = Integer(
        4,
        config=True,
        help="At most this many Google Cloud IAM calls at once from this hub.",
    )
    irsa_pod_spec = Bool(
        True,
        config=True,
        help="""
        Put what EKS's pod-identity webhook would add for an IRSA role - AWS_ROLE_ARN,
        AWS_WEB_IDENTITY_TOKEN_FILE and the projected token volume "aws-iam-token" - into
        the pod spec ourselves, for the plan's role. The webhook reads ServiceAccounts from
        its own cache, so a pod made right after its account was created or re-annotated
        can start without credentials or with the old role; with this, the first notebook
        cell works every time, and the webhook sees the work done and adds nothing twice.
        For EKS Pod Identity (aws.pod_identity) the same holds for what its webhook adds:
        AWS_CONTAINER_CREDENTIALS_FULL_URI, AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE and the
        "eks-pod-identity-token" volume. Set False to leave it all to the webhooks.
        """,
    )
    cloud_cache_seconds = Float(
        3600.0,
        config=True,
        help="""
        How long a managed role or service account that was checked or made right is
        trusted without asking the cloud again, so warm spawns make no cloud calls.
        A changed rule or template is applied at the next spawn regardless.
        """,
    )

    storage_token_url = Unicode(
        "",
        config=True,
        help="""
        The token endpoint where the hub gets the storage tokens of rules with a 'tokens'
        block (RFC 8693 token exchange of the user's login token, e.g. ESCAPE IAM's
        https://iam-escape.cloud.cnaf.infn.it/token). Empty: the authenticator's token_url.
        """,
    )
    storage_token_client_id = Unicode(
        "",
        config=True,
        help="""
        The client the hub exchanges tokens as (it must be allowed the token-exchange grant and
        the rules' audiences and scopes at the issuer). Empty: the authenticator's client_id.
        """,
    )
    storage_token_client_secret = Unicode(
        "",
        config=True,
        help="""
        That client's secret. Empty: the authenticator's client_secret. Prefer an environment
        variable or a Kubernetes Secret to writing it in the config.
        """,
    )
    storage_token_max_concurrent_refreshes = Integer(
        8,
        config=True,
        help="""
        At most this many storage-token requests to the issuer at once from this hub (spawns
        and refreshes of running servers together), so many servers whose tokens expire
        together do not flood it. Refreshes are spread over the last quarter of each token's
        life.
        """,
    )

    @cached_property
    def compiled_rules(self) -> IdentityRules:
        """The validated rules (ConfigError names the rule and key when they are wrong)."""
        return IdentityRules.from_config(self.identity_rules, self.hub_name, self.trusted_claims)


SECTIONS = ("CloudIdentity", "CloudIdentitySpawner")
"""Where the identity settings may be given (``c.CloudIdentitySpawner.*`` wins)."""


def identity_settings(config: Config) -> CloudIdentity:
    """The identity settings in a loaded config, as the spawner sees them
    (``c.CloudIdentitySpawner.*`` overrides ``c.CloudIdentity.*``)."""
    merged = Config()
    for section in SECTIONS:
        if section in config:
            merged.CloudIdentity.merge(config[section])
    return CloudIdentity(config=merged)
