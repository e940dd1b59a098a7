# The identity rules of the Azure example, in one file: examples/azure/jupyterhub_config.py loads
# it (load_subconfig), and zero-to-jupyterhub on AKS mounts it into jupyterhub_config.d
# (examples/z2jh/values-aks.yaml: --set-file hub.extraFiles.cloudidentity-rules.stringData=../azure/identity_rules.py).
# `c` is the hub's config: JupyterHub and the chart both provide it.
c.CloudIdentitySpawner.hub_name = "escape-hub"  # noqa: F821

SUBSCRIPTION = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
# az aks show -g <group> -n <cluster> --query oidcIssuerProfile.issuerUrl -o tsv
OIDC_ISSUER = f"https://westeurope.oic.prod-aks.azure.com/{TENANT}/1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d/"
SCRATCH = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/escape-data/providers/Microsoft.Storage/"
           "storageAccounts/escapescratch/blobServices/default/containers/scratch")

c.CloudIdentitySpawner.identity_rules = [  # noqa: F821
    {
        "name": "atlas",
        "match": {"groups": ["/escape/atlas"]},
        "scope": "group",
        # An identity the operator made, with a federated credential for
        # system:serviceaccount:jupyterhub:jupyter-group-escape-atlas---<hash> (see `plan`).
        "azure": {"client_id": "6a1f0c9e-3b8d-4f2a-9e7c-5d4b3a2c1e0f", "tenant_id": TENANT},
    },
    {
        "name": "escape-members",
        "match": {"groups": ["/escape", "/escape/*"]},
        "scope": "user",
        "azure": {
            "managed": {
                "subscription_id": SUBSCRIPTION,
                "resource_group": "jupyterhub-identities",
                "location": "westeurope",
                "oidc_issuer": OIDC_ISSUER,
                "identity_name": "{hub}-{username}",
                "role_assignments": [{"scope": SCRATCH, "role": "Storage Blob Data Contributor"}],
            }
        },
        "env": {"SCRATCH_CONTAINER": "https://escapescratch.blob.core.windows.net/scratch"},
    },
]
