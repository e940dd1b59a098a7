"""`cloudidentity-spawner demo --azure`: AKS Workload Identity end to end - the hub makes each
ESCAPE member's managed identity (local ARM, real SDK clients), the kubelet injects what the
Workload Identity webhook would, and the notebook's credentials endpoint exchanges the pod's
token at a local Entra endpoint that trusts only the identity's federated credential."""

from __future__ import annotations

import pytest
import requests

pytest.importorskip("oidc_provider_mock", reason="the demo extra is not installed")
pytest.importorskip("azure.mgmt.msi", reason="the azure extra is not installed")

from cloudidentity_spawner.demo import AZURE_ISSUER, AZURE_SUBSCRIPTION, NAMESPACE, Demo, _free_port  # noqa: E402

from .test_demo import TOKEN, login, wait_ready  # noqa: E402

ADMIN = f"""
c.JupyterHub.services.append({{"name": "checker", "api_token": "{TOKEN}"}})
c.JupyterHub.load_roles.append({{"name": "checker", "services": ["checker"],
    "scopes": ["read:users", "read:servers", "access:servers"]}})
"""


@pytest.fixture(scope="module")
def demo():
    with Demo(port=_free_port(), extra_config=ADMIN, azure=True) as running:
        yield running


def test_carol_gets_her_own_managed_identity_and_a_token_only_for_it(demo):
    assert any("managed identity demo-carol" in line for line in demo.mapping())
    login(demo, "carol")
    assert wait_ready(demo, "carol")["servers"][""]["ready"]
    [identity] = [i for i in demo.arm.identities.values() if i["name"] == "demo-carol"]
    [credential] = demo.arm.credentials_of(identity["id"])
    assert (credential["properties"]["issuer"], credential["properties"]["subject"]) == (
        AZURE_ISSUER, f"system:serviceaccount:{NAMESPACE}:jupyter-carol")
    sa = demo.kube.api.get("serviceaccounts", NAMESPACE, "jupyter-carol")
    assert sa["metadata"]["annotations"]["azure.workload.identity/client-id"] == identity["properties"]["clientId"]
    pod = demo.kube.api.get("pods", NAMESPACE, "jupyter-carol")
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"

    r = requests.get(f"http://127.0.0.1:{demo.port}/user/carol/api/cloudcreds/azure?resource=https://storage.azure.com",
                     headers={"Authorization": f"token {TOKEN}"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["access_token"].startswith("demo-entra-token.demo-carol.")
    assert demo.entra.issued[-1] == {"identity": "demo-carol", "subject": f"system:serviceaccount:{NAMESPACE}:jupyter-carol",
                                     "scope": "https://storage.azure.com/.default"}

    # carol's pod token presented for another identity (trusting another account) is refused.
    from cloudidentity_spawner.testing.azure import AzureResourceManager

    msi, _ = AzureResourceManager.client_factory(demo.arm_url)(AZURE_SUBSCRIPTION)
    dave = msi.user_assigned_identities.create_or_update("jupyterhub-identities", "dave-by-hand", {"location": "westeurope"})
    msi.federated_identity_credentials.create_or_update("jupyterhub-identities", "dave-by-hand", "dave", {
        "issuer": AZURE_ISSUER, "subject": f"system:serviceaccount:{NAMESPACE}:jupyter-dave", "audiences": ["api://AzureADTokenExchange"]})
    response = requests.post(f"{demo.entra.url}/{demo.arm.tenant_id}/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_assertion": demo.entra.register(NAMESPACE, "jupyter-carol"),
        "client_id": dave.client_id, "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "scope": "https://storage.azure.com/.default"}, timeout=10)
    assert response.status_code == 400 and "AADSTS70021" in response.json()["error_description"]
