"""`cloudidentity-spawner demo --pod-identity`: EKS Pod Identity end to end - the hub makes the
association, the kubelet injects what the Pod Identity webhook would, the local agent hands out
the associated role's credentials, and the notebook's credentials endpoint passes them on."""

from __future__ import annotations

import json
import time

import pytest
import requests

pytest.importorskip("oidc_provider_mock", reason="the demo extra is not installed")

import boto3  # noqa: E402

from cloudidentity_spawner.demo import CLUSTER, NAMESPACE, NOTEBOOK_ROLE, Demo, _free_port  # noqa: E402

from .test_demo import TOKEN, credentials, login, signed_in, user_token, wait_ready  # noqa: E402

ADMIN = f"""
c.JupyterHub.services.append({{"name": "checker", "api_token": "{TOKEN}"}})
c.JupyterHub.load_roles.append({{"name": "checker", "services": ["checker"],
    "scopes": ["read:users", "read:servers", "access:servers", "servers", "admin:users"]}})
"""


@pytest.fixture(scope="module")
def demo():
    with Demo(port=_free_port(), extra_config=ADMIN, pod_identity=True) as running:
        yield running


def test_carol_runs_under_her_association_with_the_shared_role(demo):
    assert any("through a Pod Identity association" in line for line in demo.mapping())
    login(demo, "carol")
    model = wait_ready(demo, "carol")
    assert model["servers"][""]["ready"]
    association = demo.eks.association_for(CLUSTER, NAMESPACE, "jupyter-carol")
    assert association["roleArn"] == NOTEBOOK_ROLE and association["disableSessionTags"] is True
    assert "arn:aws:s3:::demo-scratch/carol/*" in json.loads(association["policy"])["Statement"][0]["Resource"]
    sa = demo.kube.api.get("serviceaccounts", NAMESPACE, "jupyter-carol")
    assert "eks.amazonaws.com/role-arn" not in (sa["metadata"].get("annotations") or {})

    # The notebook's own endpoint passes on the agent's credentials for her association
    creds = requests.get(f"http://127.0.0.1:{demo.port}/user/carol/api/cloudcreds/aws",
                         headers={"Authorization": f"token {TOKEN}"}, timeout=60)
    assert creds.status_code == 200, creds.text
    body = creds.json()
    session = boto3.Session(aws_access_key_id=body["AccessKeyId"], aws_secret_access_key=body["SecretAccessKey"],
                            aws_session_token=body["SessionToken"], region_name="us-east-1")
    who = session.client("sts", endpoint_url=demo.moto_url).get_caller_identity()
    assert who["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/notebooks/eks-demo-eks-jupyter-carol")
    assert body["RoleArn"] == NOTEBOOK_ROLE and body["AssumedRoleArn"] == who["Arn"]  # named, as for IRSA
    s3 = session.client("s3", endpoint_url=demo.moto_url)
    s3.put_object(Bucket="demo-scratch", Key="carol/hello.txt", Body=b"hi")
    assert s3.get_object(Bucket="demo-scratch", Key="carol/hello.txt")["Body"].read() == b"hi"

    # From her laptop: the same association's credentials, named after her pod (EKS sets the name).
    token = user_token(signed_in(demo, "carol"), demo, "carol", ["access:servers!user=carol"])
    laptop = json.loads(credentials(demo, "aws", token=token).stdout)
    who = boto3.Session(aws_access_key_id=laptop["AccessKeyId"], aws_secret_access_key=laptop["SecretAccessKey"],
                        aws_session_token=laptop["SessionToken"], region_name="us-east-1").client(
        "sts", endpoint_url=demo.moto_url).get_caller_identity()
    assert who["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/notebooks/eks-demo-eks-jupyter-carol")


def test_stopping_keeps_the_association_and_deleting_carol_deletes_it(demo):
    api = f"http://127.0.0.1:{demo.port}/hub/api/users/carol"
    headers = {"Authorization": f"token {TOKEN}"}
    assert requests.delete(f"{api}/server", headers=headers, timeout=60).status_code in (202, 204)
    for _ in range(120):
        if not requests.get(api, headers=headers, timeout=30).json()["servers"]:
            break
        time.sleep(0.5)
    assert demo.eks.association_for(CLUSTER, NAMESPACE, "jupyter-carol") is not None
    assert requests.delete(api, headers=headers, timeout=60).status_code == 204
    assert demo.eks.association_for(CLUSTER, NAMESPACE, "jupyter-carol") is None
    assert demo.kube.api.get("serviceaccounts", NAMESPACE, "jupyter-carol") is None
