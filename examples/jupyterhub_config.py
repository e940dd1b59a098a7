# JupyterHub on EKS: ESCAPE IAM login, and a cloud identity per experiment group
# (existing roles) or per user (a role the hub creates) for everyone else.
#
# Secrets come from the environment; review what a user gets before deploying:
#   cloudidentity-spawner plan --config examples/jupyterhub_config.py \
#       --user alice --claims examples/claims/escape-iam-alice.json
import os

from cloudidentity_spawner.auth import configure_indigo_iam
from cloudidentity_spawner.providers.aws import scratch_prefix_policy

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
c.CloudIdentitySpawner.hub_name = "escape-hub"

ACCOUNT = os.environ.get("AWS_ACCOUNT_ID", "123456789012")
c.CloudIdentitySpawner.identity_rules = [
    {
        "name": "atlas",
        "match": {"groups": ["/escape/atlas", "/escape/atlas/*"]},
        "scope": "group",
        "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/escape-atlas"},
    },
    {
        "name": "cms",
        "match": {"groups": ["/escape/cms"]},
        "scope": "group",
        "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/escape-cms"},
    },
    {
        "name": "escape-members",
        "match": {"groups": ["/escape"]},
        "scope": "user",
        "aws": {
            "managed": {
                "oidc_provider_arn": os.environ.get(
                    "EKS_OIDC_PROVIDER_ARN",
                    f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
                ),
                "role_path": "/jupyterhub/escape-hub/",
                "permissions_boundary": f"arn:aws:iam::{ACCOUNT}:policy/jupyterhub-user-boundary",
                "inline_policy": scratch_prefix_policy("escape-scratch"),
            }
        },
        "env": {"SCRATCH_BUCKET": "s3://escape-scratch/{username}"},
    },
]
