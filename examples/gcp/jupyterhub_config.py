# CloudIdentitySpawner on GKE with Workload Identity: a shared Google service
# account per lab group, and a hub-managed one per user for everyone else.
#
#   cloudidentity-spawner plan --config examples/gcp/jupyterhub_config.py \
#       --user carol --claims examples/claims/keycloak-carol.json
c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "cloudidentity"
c.KubeSpawner.namespace = "jupyterhub"

load_subconfig("identity_rules.py")  # noqa: F821  (relative to this file)
if "identity_rules" not in c.CloudIdentitySpawner:  # load_subconfig skips a missing file silently
    raise FileNotFoundError(f"identity_rules.py is missing next to {__file__}")
