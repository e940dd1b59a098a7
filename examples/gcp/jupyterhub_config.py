# CloudIdentitySpawner on GKE with Workload Identity: a shared Google service
# account per lab group, and a hub-managed one per user for everyone else.
#
#   cloudidentity-spawner plan --config examples/gcp/jupyterhub_config.py \
#       --user carol --claims examples/claims/keycloak-carol.json
c = get_config()  # noqa: F821

c.JupyterHub.spawner_class = "cloudidentity"
c.KubeSpawner.namespace = "jupyterhub"
c.CloudIdentitySpawner.hub_name = "lab-hub"

PROJECT = "my-lab-project"

c.CloudIdentitySpawner.identity_rules = [
    {
        "name": "genomics",
        "match": {"groups": ["/labs/genomics"]},
        "scope": "group",
        "gcp": {"service_account": f"genomics-notebooks@{PROJECT}.iam.gserviceaccount.com"},
    },
    {
        "name": "staff",
        "match": {"groups": ["/staff", "/staff/*"]},
        "scope": "user",
        "gcp": {
            "managed": {
                "project": PROJECT,
                "project_roles": ["roles/serviceusage.serviceUsageConsumer"],
                "bucket_roles": [
                    {"bucket": "lab-scratch", "role": "roles/storage.objectUser", "prefix": "{username}"}
                ],
            }
        },
        "env": {"SCRATCH_BUCKET": "gs://lab-scratch/{username}"},
    },
]
