# CloudIdentitySpawner on EKS with IRSA: per-group roles for two experiments,
# and a role of their own (created by the hub) for everyone else (identity_rules.py).
#
# Try it without a cluster:
#   cloudidentity-spawner plan --config examples/aws/jupyterhub_config.py \
#       --user alice --claims examples/claims/escape-iam-alice.json
c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "cloudidentity"
c.KubeSpawner.namespace = "jupyterhub"

load_subconfig("identity_rules.py")  # noqa: F821  (relative to this file)
if "identity_rules" not in c.CloudIdentitySpawner:  # load_subconfig skips a missing file silently
    raise FileNotFoundError(f"identity_rules.py is missing next to {__file__}")
