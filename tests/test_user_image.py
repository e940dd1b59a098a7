"""The notebook side: the credentials extension needs only jupyter_server in the user image.

A user image has Jupyter Server, not the hub's packages (JupyterHub's app, KubeSpawner,
SQLAlchemy). The extension must load there, and loading it in a Jupyter server must
never patch JupyterHub's start-up (that patch is for the hub process only).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from .test_creds import TOKEN, free_port, metadata  # noqa: F401  (metadata: a fixture used below)

ROOT = Path(__file__).resolve().parent.parent
HUB_SIDE = ("kubespawner", "jupyterhub", "sqlalchemy", "kubernetes_asyncio",
            "cloudidentity_spawner.startup", "cloudidentity_spawner.spawner", "cloudidentity_spawner.config")


def test_loading_the_extension_imports_nothing_hub_side_and_patches_nothing():
    # The real loading path: a ServerApp initialised with the extension enabled.
    code = f"""
import sys
from jupyter_server.serverapp import ServerApp
app = ServerApp()
app.initialize(argv=["--ServerApp.port=0", "--ServerApp.open_browser=False", "--ServerApp.root_dir=/tmp",
                     "--ServerApp.jpserver_extensions={{'cloudidentity_spawner.creds': True}}"])
assert "cloudidentity_spawner.creds" in sys.modules, "extension not loaded"
assert any("cloudcreds" in str(rule.matcher.regex.pattern) for rule in app.web_app.default_router.rules[0].target.rules), "no route"
print(sorted(m for m in sys.modules if m.split(".")[0] in {{"kubespawner", "jupyterhub", "sqlalchemy", "kubernetes_asyncio"}}
             or m in {HUB_SIDE!r}))
from jupyterhub.app import JupyterHub
print(getattr(JupyterHub, "_cloudidentity_guarded", False))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-2:] == ["[]", "False"], out.stdout


def test_hub_side_import_installs_the_start_up_check():
    # The contrast: the hub imports the spawner, and that installs the check.
    code = "import cloudidentity_spawner.spawner\nfrom jupyterhub.app import JupyterHub\nprint(JupyterHub._cloudidentity_guarded)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/tmp")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "True"


@pytest.fixture(scope="session")
def user_image_venv() -> Path:
    """A virtualenv like a user image: jupyter_server, and this package installed with
    ``pip install --no-deps`` (what the docs tell operators). Kept between runs in
    ``.venv-user``; the package itself is reinstalled from this checkout every run."""
    venv = Path(os.environ.get("CLOUDIDENTITY_USER_VENV", ROOT / ".venv-user"))
    python = venv / "bin" / "python"
    if not (python.exists() and subprocess.run([python, "-c", "import jupyter_server"]).returncode == 0):
        subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "jupyter_server>=2"], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--force-reinstall", str(ROOT)], check=True,
                   cwd="/tmp")
    return venv


def test_user_image_has_none_of_the_hub_packages(user_image_venv):
    for module in ("kubespawner", "jupyterhub", "kubernetes_asyncio", "sqlalchemy"):
        found = subprocess.run([user_image_venv / "bin" / "python", "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"{module} is importable in the user-image venv"


def test_extension_serves_credentials_in_a_user_image(user_image_venv, tmp_path, metadata):  # noqa: F811
    # No --ServerApp.jpserver_extensions: installing the package enables the extension.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GCE_", "JUPYTER", "PYTHON"))}
    env["GCE_METADATA_HOST"] = metadata
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [user_image_venv / "bin" / "python", "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.open_browser=False", "--allow-root",
             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(url + "/api", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        headers = {"Authorization": f"token {TOKEN}"}
        gcp = requests.get(url + "/api/cloudcreds/gcp", headers=headers, timeout=30)
        assert gcp.status_code == 200, (gcp.text, log.read_text()[-2000:])
        assert gcp.json()["access_token"] == "ya29.local-token"
        aws = requests.get(url + "/api/cloudcreds/aws", headers=headers, timeout=30)
        assert aws.status_code == 404 and "AWS_ROLE_ARN" in aws.json()["error"]
        assert requests.get(url + "/api/cloudcreds/gcp", timeout=30).status_code == 403
    finally:
        process.terminate()
        process.wait(timeout=30)
