"""Login to spawn in headless Chromium: the OIDC provider's page, the per-group profile form,
the spawn progress page, against a real JupyterHub, the Kubernetes emulator and moto."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

import pytest
import requests

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytest.importorskip("oidc_provider_mock", reason="the demo extra is not installed")

from cloudidentity_spawner.demo import NAMESPACE, Demo, _free_port  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
TOKEN = secrets.token_hex(16)
CHECKER = f"""
c.JupyterHub.services.append({{"name": "checker", "api_token": "{TOKEN}"}})
c.JupyterHub.load_roles.append({{"name": "checker", "services": ["checker"],
    "scopes": ["read:users", "read:servers", "servers", "access:servers"]}})
"""

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (see .ci/run)")


@pytest.fixture(scope="module")
def demo():
    with Demo(port=_free_port(), extra_config=CHECKER) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


def log_in(browser, demo, user, landing="**/hub/spawn**"):
    page = browser.new_context().new_page()
    page.goto(f"http://127.0.0.1:{demo.port}/hub/login")
    page.get_by_text("Sign in with the demo identity provider").click()
    page.get_by_role("button", name=user, exact=True).click()
    page.wait_for_url(landing)
    return page


def test_alice_sees_her_profiles_and_her_server_starts_under_her_account(browser, demo):
    page = log_in(browser, demo, "alice")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "profile-form-alice.png"), full_page=True)
    text = page.content()
    assert "Personal analysis with a role of your own" in text and "ROOT analysis" in text
    line = page.locator(".cloudidentity-identity").inner_text()
    assert line == ("Your server will run as arn:aws:iam::123456789012:role/jupyterhub/escape-atlas "
                    "(rule atlas, shared with group /escape/atlas).")
    # While she reads the form, the hub has made her account at login (prepare_at_login).
    for _ in range(100):
        made = [a for a in demo.kube.api.list("serviceaccounts", NAMESPACE)
                if a["metadata"]["name"].startswith("jupyter-group-escape-atlas")]
        if made:
            break
        time.sleep(0.1)
    assert made and demo.kube.api.get("pods", NAMESPACE, "jupyter-alice") is None
    # The profile that names its own rule says what it gives her instead.
    personal = page.locator("label", has_text="Personal analysis with a role of your own").inner_text()
    assert "Runs as arn:aws:iam::123456789012:role/jupyterhub/demo/demo-alice (rule escape-members, your own)." in personal
    page.get_by_text("Standard notebook").click()
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/alice/**", timeout=90_000)

    pod = demo.kube.api.get("pods", NAMESPACE, "jupyter-alice")
    sa = demo.kube.api.get("serviceaccounts", NAMESPACE, pod["spec"]["serviceAccountName"])
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/jupyterhub/escape-atlas")
    assert sa["metadata"]["annotations"]["cloudidentity-spawner/rule"] == "atlas"


def test_carol_does_not_see_atlas_profiles(browser, demo):
    page = log_in(browser, demo, "carol")
    page.screenshot(path=str(ARTIFACTS / "profile-form-carol.png"), full_page=True)
    text = page.content()
    assert "Standard notebook" in text
    assert "Personal analysis" not in text and "ROOT analysis" not in text
    assert page.locator(".cloudidentity-identity").inner_text() == (
        "Your server will run as arn:aws:iam::123456789012:role/jupyterhub/demo/demo-carol (rule escape-members, your own).")


def test_bob_sees_why_before_pressing_start_and_has_no_start_button(browser, demo):
    page = log_in(browser, demo, "bob")
    assert page.locator(".cloudidentity-identity").inner_text().startswith("No cloud identity is configured for user 'bob'")
    assert page.locator('#spawn_form [type="submit"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / "spawn-form-bob.png"), full_page=True)
    # Submitted anyway (the form posted by hand), the spawn is refused with the same message.
    with page.expect_navigation(timeout=60_000):
        page.evaluate("document.getElementById('spawn_form').submit()")
    error = page.locator(".spawn-error-msg")  # JupyterHub's own error line on the spawn page
    error.wait_for(timeout=60_000)
    assert "No cloud identity is configured for user 'bob'" in error.inner_text()
    assert "Traceback" not in page.content()
    page.screenshot(path=str(ARTIFACTS / "spawn-failed-bob.png"), full_page=True)


def test_posting_a_hidden_profile_is_refused(demo):
    # carol has logged in (previous test); start her server asking for the hidden profile via the REST API.
    r = requests.post(
        f"http://127.0.0.1:{demo.port}/hub/api/users/carol/server",
        json={"profile": "personal"},
        headers={"Authorization": f"token {TOKEN}"},
        timeout=60,
    )
    assert r.status_code == 403
    assert r.json()["message"] == "The server profile 'personal' is not available to you."
    model = requests.get(f"http://127.0.0.1:{demo.port}/hub/api/users/carol",
                         headers={"Authorization": f"token {TOKEN}"}, timeout=30).json()
    assert model["servers"] == {}
    assert demo.kube.api.get("pods", NAMESPACE, "jupyter-carol") is None
    assert "refused profile 'personal'" in Path(demo.hub_log.name).read_text()


def test_admins_see_who_runs_as_what_and_others_are_kept_out(browser, demo):
    # An account left behind by a user the hub no longer has (deleted while the hub was down).
    demo.kube.api.put("serviceaccounts", NAMESPACE, {"metadata": {
        "name": "jupyter-zed", "namespace": NAMESPACE,
        "labels": {"app.kubernetes.io/managed-by": "cloudidentity-spawner", "cloudidentity-spawner/hub": "demo",
                   "cloudidentity-spawner/scope": "user", "cloudidentity-spawner/user": "zed"},
        "annotations": {"cloudidentity-spawner/owner": "user:zed", "cloudidentity-spawner/rule": "escape-members",
                        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/jupyterhub/demo/demo-zed"}}})
    # alice is a hub admin; her server runs (first test), so the login lands on it.
    page = log_in(browser, demo, "alice", landing=lambda url: "/user/alice/" in url or "/hub/spawn" in url)
    page.goto(f"http://127.0.0.1:{demo.port}/services/cloudidentity/")
    page.locator("#accounts").wait_for()
    atlas = page.locator(f"#accounts tr[data-account^='{NAMESPACE}/jupyter-group-escape-atlas']")
    assert atlas.locator("td").nth(0).inner_text() == "ok"
    assert atlas.locator("td").nth(2).inner_text() == "group:/escape/atlas"
    assert "arn:aws:iam::123456789012:role/jupyterhub/escape-atlas" in atlas.inner_text()
    assert "CloudIdentityCreated" in atlas.inner_text()  # the latest Event on the account
    zed = page.locator(f"#accounts tr[data-account='{NAMESPACE}/jupyter-zed']")
    assert zed.locator("td").nth(0).inner_text() == "orphaned"
    assert "user zed is no longer on the hub" in zed.inner_text()
    users = page.locator("#users")
    assert "no identity: no identity rule matches user 'bob'" in users.locator("tr[data-user='bob']").inner_text()
    # carol logged in and never started a server: her account was made at login, and is right.
    carol = page.locator(f"#accounts tr[data-account='{NAMESPACE}/jupyter-carol']")
    assert carol.locator("td").nth(0).inner_text() == "ok" and "demo-carol" in carol.inner_text()
    assert "escape-atlas (rule atlas, group scope)" in users.locator("tr[data-user='alice']").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-page.png"), full_page=True)

    page.get_by_label("search").fill("zed")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**q=zed**")
    assert page.locator("#accounts tbody tr").count() == 1
    assert page.locator("#users tbody tr").count() == 0
    assert page.locator("#summary").inner_text().startswith("1 ServiceAccount matching")
    # It fits the window (long ARNs wrap) and leads back to the hub.
    page.set_viewport_size({"width": 1024, "height": 768})
    page.goto(f"http://127.0.0.1:{demo.port}/services/cloudidentity/")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.get_by_role("link", name="Home").click()
    page.wait_for_url("**/hub/home")

    # carol is no admin and was granted nothing: the hub does not let her in.
    other = log_in(browser, demo, "carol")
    response = other.goto(f"http://127.0.0.1:{demo.port}/services/cloudidentity/")
    assert response.status == 403
    assert "jupyter-zed" not in other.content()
