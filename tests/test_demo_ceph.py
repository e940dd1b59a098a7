"""`cloudidentity-spawner demo --ceph`: an on-premises hub end to end with a real Ceph RADOS
Gateway - the hub makes each ESCAPE member a role at the gateway that trusts exactly their
ServiceAccount, and the notebook's credentials (its own projected token, exchanged at the
gateway's STS) reach the member's prefix and nobody else's."""

from __future__ import annotations


import pytest

pytest.importorskip("oidc_provider_mock", reason="the demo extra is not installed")
boto3 = pytest.importorskip("boto3", reason="the aws extra is not installed")

from botocore.exceptions import ClientError  # noqa: E402

from cloudidentity_spawner.demo import CEPH_BUCKET, Demo, _free_port, banner  # noqa: E402

from .test_demo import login, notebook_credentials, wait_ready  # noqa: E402
from .test_demo_azure import ADMIN  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    with Demo(port=_free_port(), extra_config=ADMIN, ceph=True) as running:
        yield running


def test_carols_notebook_reaches_her_prefix_at_the_gateway_and_nobody_elses(demo):
    assert any("carol" in line and f"s3://{CEPH_BUCKET}/users/carol/*" in line for line in demo.mapping()), demo.mapping()
    assert "Ceph RADOS Gateway" in banner(demo)
    login(demo, "carol")
    assert wait_ready(demo, "carol")["servers"][""]["ready"]
    admin = demo.gateway.admin_kwargs()
    role = boto3.client("iam", **admin).get_role(RoleName="demo-carol")["Role"]
    assert role["Arn"] == "arn:aws:iam:::role/jupyterhub/demo/demo-carol"

    creds = notebook_credentials(demo, "carol", "aws")
    assert creds["AssumedRoleArn"] == "arn:aws:sts:::assumed-role/jupyterhub/demo/demo-carol/carol"
    s3 = boto3.client("s3", **demo.gateway.client_kwargs(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]))
    s3.put_object(Bucket=CEPH_BUCKET, Key="users/carol/notes.txt", Body=b"hi")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=CEPH_BUCKET, Prefix="users/carol/")["Contents"]] == ["users/carol/notes.txt"]
    for refused in (lambda: s3.put_object(Bucket=CEPH_BUCKET, Key="users/alice/x.txt", Body=b"x"),
                    lambda: s3.list_objects_v2(Bucket=CEPH_BUCKET, Prefix="users/alice/"),
                    lambda: s3.list_objects_v2(Bucket=CEPH_BUCKET, Prefix="")):
        with pytest.raises(ClientError) as e:
            refused()
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
