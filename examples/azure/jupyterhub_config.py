# CloudIdentitySpawner on AKS with Workload Identity: the ATLAS group shares an existing
# managed identity, every other ESCAPE member gets a hub-managed identity of their own with
# one federated credential (for exactly their ServiceAccount) and write access to one container.
#
#   cloudidentity-spawner plan --config examples/azure/jupyterhub_config.py \
#       --user dave --claims examples/claims/escape-iam-dave.json
c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "cloudidentity"
c.KubeSpawner.namespace = "jupyterhub"
load_subconfig("identity_rules.py")  # noqa: F821  (relative to this file)
if "identity_rules" not in c.CloudIdentitySpawner:  # load_subconfig skips a missing file silently
    raise FileNotFoundError(f"identity_rules.py is missing next to {__file__}")
