# JupyterHub on EKS: ESCAPE IAM login, and a cloud identity per experiment group
# (existing roles) or per user (a role the hub creates) for everyone else.
#
# Secrets come from the environment; review what a user gets before deploying:
#   cloudidentity-spawner plan --config examples/jupyterhub_config.py \
#       --user alice --claims examples/claims/escape-iam-alice.json
import os

from cloudidentity_spawner.auth import configure_indigo_iam

c = get_config()  # noqa: F821

configure_indigo_iam(
    c,
    os.environ.get("OIDC_ISSUER", "https://iam-escape.cloud.cnaf.infn.it/"),
    client_id=os.environ.get("OIDC_CLIENT_ID", "jupyterhub"),
    client_secret=os.environ.get("OIDC_CLIENT_SECRET", ""),
    callback_url=os.environ.get("OAUTH_CALLBACK_URL", "https://hub.example.org/hub/oauth_callback"),
)
c.GenericOAuthenticator.allowed_groups = ["/escape"]

c.JupyterHub.spawner_class = "cloudidentity"
c.KubeSpawner.namespace = os.environ.get("POD_NAMESPACE", "jupyterhub")
load_subconfig("aws/identity_rules.py")  # noqa: F821  (the rules, shared with examples/aws and z2jh)
if "identity_rules" not in c.CloudIdentitySpawner:  # load_subconfig skips a missing file silently
    raise FileNotFoundError(f"aws/identity_rules.py is missing next to {__file__}")
