"""`cloudidentity-spawner demo`: real JupyterHub, OIDC login, emulated cluster, moto - end to end."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytest.importorskip("oidc_provider_mock", reason="the demo extra is not installed")

from cloudidentity_spawner.demo import NAMESPACE, Demo, _free_port, banner, pod_environment  # noqa: E402

TOKEN = secrets.token_hex(16)
CHECKER = f"""
c.JupyterHub.services.append({{"name": "checker", "api_token": "{TOKEN}"}})
c.JupyterHub.load_roles.append({{"name": "checker", "services": ["checker"],
    "scopes": ["read:users", "read:servers", "access:servers", "read:metrics"]}})
"""


@pytest.fixture(scope="module")
def demo():
    with Demo(port=_free_port(), extra_config=CHECKER) as running:
        yield running


def login(demo, user: str, profile: str = "standard") -> requests.Session:
    """Log in through the identity provider's page and submit the profile form, as a person would."""
    session = requests.Session()
    page = session.get(f"http://127.0.0.1:{demo.port}/hub/oauth_login", timeout=30)
    assert "oauth2/authorize" in page.url and user in page.text  # the provider offers the demo users
    form = session.post(page.url, data={"sub": user}, timeout=60)
    assert form.url.endswith("/hub/spawn"), form.url
    xsrf = re.search(r'_xsrf=([^"&\s]+)', form.text).group(1)
    session.post(form.url, data={"_xsrf": xsrf, "profile": profile}, timeout=60)
    return session


def hub_api(demo, path: str) -> dict:
    r = requests.get(f"http://127.0.0.1:{demo.port}/hub/api{path}", headers={"Authorization": f"token {TOKEN}"}, timeout=30)
    r.raise_for_status()
    return r.json()


def wait_ready(demo, user: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = hub_api(demo, f"/users/{user}")
        server = model["servers"].get("")
        if server and server["ready"]:
            return model
        if not model["pending"] and not server:
            return model
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server did not become ready")


def notebook_credentials(demo, user: str, cloud: str) -> dict:
    """What ``/user/<user>/api/cloudcreds/<cloud>`` answers (asked again while a server just
    started has not checked the token with the hub yet); on failure, the server's log."""
    for _ in range(20):
        r = requests.get(f"http://127.0.0.1:{demo.port}/user/{user}/api/cloudcreds/{cloud}",
                         headers={"Authorization": f"token {TOKEN}"}, timeout=60)
        if r.status_code != 403:
            break
        time.sleep(0.5)
    log = next(Path(demo.workdir).glob(f"jupyter-{user}*.log"), None)
    assert r.status_code == 200, (r.text, log.read_text()[-3000:] if log else "")
    return r.json()


def test_carol_gets_her_own_role_and_a_running_notebook(demo):
    login(demo, "carol")
    model = wait_ready(demo, "carol")
    assert model["groups"] == ["/escape"]
    assert model["servers"][""]["ready"]
    status = requests.get(f"http://127.0.0.1:{demo.port}/user/carol/api/status",
                          headers={"Authorization": f"token {TOKEN}"}, timeout=30)
    assert status.status_code == 200 and "started" in status.json()

    sa = demo.kube.api.get("serviceaccounts", NAMESPACE, "jupyter-carol")
    role_arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role_arn == "arn:aws:iam::123456789012:role/jupyterhub/demo/demo-carol"
    pod = demo.kube.api.get("pods", NAMESPACE, "jupyter-carol")
    assert pod["spec"]["serviceAccountName"] == "jupyter-carol"
    assert pod["status"]["podIP"].startswith("127.0.0.")

    # An AWS call made with the pod's environment reaches moto as carol's role.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(pod_environment(pod, sa, demo.moto_url, demo.workdir))
    out = subprocess.run(
        [sys.executable, "-c", "import boto3, json; print(json.dumps(boto3.client('sts').get_caller_identity()))"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    identity = json.loads(out.stdout)
    # The session names carol (AWS_ROLE_SESSION_NAME, set by the hub): CloudTrail says who.
    assert re.fullmatch(r"arn:aws:sts::123456789012:assumed-role/demo-carol/carol", identity["Arn"]), identity

    # And her server hands out short-lived credentials for that role, through the hub's proxy.
    creds = requests.get(f"http://127.0.0.1:{demo.port}/user/carol/api/cloudcreds/aws",
                         headers={"Authorization": f"token {TOKEN}"}, timeout=60)
    assert creds.status_code == 200, creds.text
    assert creds.json()["AssumedRoleArn"].endswith(":assumed-role/demo-carol/carol")  # the same session name


def test_atlas_members_share_the_group_account(demo):
    for user in ("alice", "amir"):
        login(demo, user)
        wait_ready(demo, user)
    pods = [demo.kube.api.get("pods", NAMESPACE, f"jupyter-{u}") for u in ("alice", "amir")]
    accounts = {p["spec"]["serviceAccountName"] for p in pods}
    assert len(accounts) == 1
    [name] = accounts
    sa = demo.kube.api.get("serviceaccounts", NAMESPACE, name)
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/jupyterhub/escape-atlas")


def test_bob_without_groups_sees_why_on_the_spawn_page(demo):
    session = login(demo, "bob")
    model = wait_ready(demo, "bob")
    assert model["servers"] == {}
    page = session.get(f"http://127.0.0.1:{demo.port}/hub/spawn-pending/bob", timeout=30)
    assert "No cloud identity is configured for user &#39;bob&#39; (no groups); ask your hub admin." in page.text \
        or "No cloud identity is configured for user 'bob' (no groups); ask your hub admin." in page.text
    assert "Traceback" not in page.text
    assert demo.kube.api.get("pods", NAMESPACE, "jupyter-bob") is None


def test_hub_metrics_show_identity_decisions(demo):
    # After the spawns above, the hub's own /hub/metrics carries ours.
    r = requests.get(f"http://127.0.0.1:{demo.port}/hub/metrics", headers={"Authorization": f"token {TOKEN}"}, timeout=30)
    assert r.status_code == 200
    assert 'cloudidentity_spawn_decisions_total{outcome="ok",provider="aws",scope="user"}' in r.text
    assert 'cloudidentity_spawn_decisions_total{outcome="refused",provider="",scope=""}' in r.text


def run_status(demo, token: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "cloudidentity-spawner")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
    env.update(KUBECONFIG=os.path.join(demo.workdir, "kubeconfig"), JUPYTERHUB_API_TOKEN=token)
    return subprocess.run([exe, "status", "--config", os.path.join(demo.workdir, "jupyterhub_config.py"), "--json",
                           "--hub-url", f"http://127.0.0.1:{demo.port}/hub/api"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_status_asks_the_running_hub_and_refuses_a_token_that_cannot_see_every_user(demo):
    refused = run_status(demo, TOKEN)  # read:users, but not list:users
    assert refused.returncode == 1
    assert "lacks the scopes list:users" in refused.stderr and "Traceback" not in refused.stderr
    # The commands the banner gives, as a shell in another terminal runs them.
    commands = [line.strip() for line in banner(demo).splitlines() if line.startswith("  . ")
                or line.startswith("  cloudidentity-spawner status")]
    assert len(commands) == 2
    script = f"{commands[0]} && PATH={os.path.dirname(sys.executable)}:$PATH {commands[1]} --json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "AWS_", "KUBECONFIG"))}
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    accounts = {a["service_account"]: a for a in json.loads(out.stdout)["accounts"]}
    carol = accounts[f"{NAMESPACE}/jupyter-carol"]  # she spawned in the first test
    assert (carol["state"], carol["rule"], carol["identity"]) == (
        "ok", "escape-members", "aws:arn:aws:iam::123456789012:role/jupyterhub/demo/demo-carol")


def test_ctrl_c_stops_the_demo_at_once_and_leaves_nothing_running():
    """Ctrl-C in a terminal sends SIGINT to the demo's process group - also when the demo was
    started with SIGINT ignored, as a shell's background job is (the hub's services inherit it)."""
    import psutil

    port = _free_port()
    demo = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "cloudidentity-spawner"), "demo", "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    banner = []
    try:
        for line in demo.stdout:
            banner.append(line)
            if "Ctrl-C" in line:
                break
        assert any("Ctrl-C" in line for line in banner), "".join(banner)
        started = psutil.Process(demo.pid).children(recursive=True)
        assert len(started) >= 3  # the hub, its proxy and the admin service
        time.sleep(1)  # the hub's services up
        asked = time.monotonic()
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(30)
        took = time.monotonic() - asked
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(started, timeout=1)
    assert alive == [] and demo.returncode == 0
    assert took < 5, f"{took:.1f} s"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/hub/api", timeout=2)


def user_token(session: requests.Session, demo, user: str, scopes: list[str]) -> str:
    """A token made as on the hub's token page (the logged-in user's own request)."""
    r = session.post(f"http://127.0.0.1:{demo.port}/hub/api/users/{user}/tokens", json={"scopes": scopes, "note": "laptop"},
                     headers={"X-XSRFToken": xsrf(session)}, timeout=30)
    assert r.status_code == 201, r.text
    return r.json()["token"]


def credentials(demo, *args: str, token: str | None = None, tmp_path=None) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "cloudidentity-spawner")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "JUPYTERHUB_"))}
    if token is not None:
        env["JUPYTERHUB_API_TOKEN"] = token
    return subprocess.run([exe, "credentials", "--hub", f"http://127.0.0.1:{demo.port}", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_credentials_from_another_computer_act_as_carols_role(demo, tmp_path):
    """boto3 on a laptop with `credential_process = cloudidentity-spawner credentials ... aws` in its
    config: the credentials are carol's role's, and each run of the process gets fresh ones."""
    running = hub_api(demo, "/users/carol")["servers"].get("")
    session = signed_in(demo, "carol") if running else login(demo, "carol")
    assert wait_ready(demo, "carol")["servers"][""]["ready"]
    token_file = tmp_path / "jupyterhub-token"
    token_file.write_text(user_token(session, demo, "carol", ["access:servers!user=carol"]))
    exe = os.path.join(os.path.dirname(sys.executable), "cloudidentity-spawner")
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\ncredential_process = {exe} credentials --hub http://127.0.0.1:{demo.port} "
                      f"--token-file {token_file} aws\nregion = us-east-1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "JUPYTERHUB_"))}
    env.update(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_ENDPOINT_URL=demo.moto_url)
    laptop = subprocess.run([sys.executable, "-c", "import boto3; print(boto3.client('sts').get_caller_identity()['Arn'])"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert laptop.returncode == 0, laptop.stderr[-2000:]
    assert ":assumed-role/demo-carol/carol" in laptop.stdout  # the session names her, from the laptop too
    runs = [json.loads(credentials(demo, "--token-file", str(token_file), "aws").stdout) for _ in range(2)]
    assert all(r["Version"] == 1 and r["Expiration"] for r in runs)
    assert runs[0]["AccessKeyId"] != runs[1]["AccessKeyId"]
    shell = credentials(demo, "--token-file", str(token_file), "--format", "env", "aws")
    assert shell.returncode == 0 and shell.stdout.startswith("export AWS_ACCESS_KEY_ID=")
    # With nothing but Python and this package (no site-packages at all: pip install --no-deps).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__import__("cloudidentity_spawner").__file__)))
    bare = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {package_root!r}); "
                           "from cloudidentity_spawner.cli import main; sys.exit(main())",
                           "credentials", "--hub", f"http://127.0.0.1:{demo.port}", "--token-file", str(token_file), "aws"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert json.loads(bare.stdout)["SessionToken"]


def signed_in(demo, user: str) -> requests.Session:
    """A browser session of *user* (logged in at the identity provider; no server started)."""
    session = requests.Session()
    page = session.get(f"http://127.0.0.1:{demo.port}/hub/oauth_login", timeout=30)
    session.post(page.url, data={"sub": user}, timeout=60)
    assert xsrf(session), "not logged in"
    return session


def xsrf(session: requests.Session) -> str:
    """The hub's _xsrf cookie (the hub and the user's server may each set one: the hub's path is /hub/)."""
    cookies = [c for c in session.cookies if c.name == "_xsrf"]
    return next((c.value for c in cookies if c.path.startswith("/hub")), cookies[0].value if cookies else "")


def test_credentials_refuses_in_one_line(demo, tmp_path):
    """No token, a token without the scope, another user's token, a stopped server: one line, exit 1."""
    carol = signed_in(demo, "carol")
    narrow = user_token(carol, demo, "carol", ["read:users:name!user=carol"])
    bob = signed_in(demo, "bob")  # bob has no identity: his server does not run
    bobs = user_token(bob, demo, "bob", ["access:servers!user=bob"])
    cases = {
        "no token": credentials(demo, "aws"),
        "no scope": credentials(demo, "aws", token=narrow),
        "another user's": credentials(demo, "--user", "carol", "aws", token=bobs),
        "stopped": credentials(demo, "aws", token=bobs),
        "bad token": credentials(demo, "aws", token="not-a-token"),
    }
    for name, done in cases.items():
        assert done.returncode == 1 and done.stdout == "", (name, done)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, (name, done.stderr)
    assert "JUPYTERHUB_API_TOKEN" in cases["no token"].stderr
    assert "access:servers!user=carol" in cases["no scope"].stderr
    assert "access:servers!user=carol" in cases["another user's"].stderr
    assert "bob's server is not running" in cases["stopped"].stderr
    assert "refused the API token" in cases["bad token"].stderr
