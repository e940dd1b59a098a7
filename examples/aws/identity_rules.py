# The identity rules of the ESCAPE examples, in one file that every example loads:
#   examples/aws/jupyterhub_config.py and examples/jupyterhub_config.py (load_subconfig), and
#   zero-to-jupyterhub (examples/z2jh/values.yaml mounts it into jupyterhub_config.d).
# Per-group roles for two experiments, and a role of their own (created by the hub) for
# every other ESCAPE member. `c` is the hub's config: JupyterHub and the chart both provide it.
from cloudidentity_spawner.providers.aws import scratch_prefix_policy

c.CloudIdentitySpawner.hub_name = "escape-hub"  # noqa: F821

ACCOUNT = "123456789012"
OIDC_PROVIDER = f"arn:aws:iam::{ACCOUNT}:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"

# The per-user scratch prefix pattern: read/write s3://escape-scratch/<user>/*
# and list only that prefix (the same document as examples/aws/scratch-prefix-policy.json).
SCRATCH_POLICY = scratch_prefix_policy("escape-scratch")

c.CloudIdentitySpawner.identity_rules = [  # noqa: F821
    {
        "name": "atlas",
        "match": {"groups": ["/escape/atlas", "/escape/atlas/*"]},
        "scope": "group",
        "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/escape-atlas"},
        "env": {"SCRATCH_BUCKET": "s3://escape-scratch/{username}"},
    },
    {
        "name": "cms",
        "match": {"groups": ["/escape/cms"]},
        "scope": "group",
        "aws": {"role_arn": f"arn:aws:iam::{ACCOUNT}:role/jupyterhub/escape-cms"},
    },
    {
        "name": "escape-members",
        "match": {"groups": ["/escape", "/escape/*"]},
        "scope": "user",
        "aws": {
            "managed": {
                "oidc_provider_arn": OIDC_PROVIDER,
                "role_path": "/jupyterhub/escape-hub/",
                "permissions_boundary": f"arn:aws:iam::{ACCOUNT}:policy/jupyterhub-user-boundary",
                "inline_policy": SCRATCH_POLICY,
            }
        },
        "env": {"SCRATCH_BUCKET": "s3://escape-scratch/{username}"},
    },
]
