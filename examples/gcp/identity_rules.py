# The identity rules of the Google Cloud example, in one file: examples/gcp/jupyterhub_config.py
# loads it (load_subconfig), and zero-to-jupyterhub on GKE mounts it into jupyterhub_config.d
# (examples/z2jh/values-gke.yaml: --set-file hub.extraFiles.cloudidentity-rules.stringData=../gcp/identity_rules.py).
# A shared Google service account per lab group, and a hub-managed one per user for everyone
# else. `c` is the hub's config: JupyterHub and the chart both provide it.
c.CloudIdentitySpawner.hub_name = "lab-hub"  # noqa: F821

PROJECT = "my-lab-project"

c.CloudIdentitySpawner.identity_rules = [  # noqa: F821
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
