"""A real Ceph RADOS Gateway on 127.0.0.1: one monitor, one in-memory OSD and radosgw, with
STS and the IAM API on (Debian's ``radosgw ceph-mon ceph-osd ceph-common``).

Not a double: the gateway decides every role assumption, trust condition and S3 policy
itself. Authentication between the daemons is off (``auth ... = none``) and everything
lives in one temporary folder; a gateway is ready in about 2 s and uses ~130 MB.

    gateway = CephGateway(tmp_path).start()
    iam = boto3.client("iam", **gateway.admin_kwargs())
    gateway.stop()

Settings that matter (found on 16.2): ``ms_mon_client_mode = crc`` (otherwise radosgw's
monitor session fails authentication and it gives up after minutes), a short
``paxos_propose_interval`` (ready in seconds, not ~12 s), single-OSD pool sizes, and for STS
``rgw_sts_key`` (16 characters) with ``rgw_s3_auth_use_sts``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

DAEMONS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool")
ADMIN_CAPS = "oidc-provider=*;roles=*;user-policy=*;users=*;buckets=*"


def available() -> bool:
    """Whether Debian's Ceph daemons are installed (``make test`` installs them)."""
    return all(shutil.which(d) for d in DAEMONS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CephGateway:
    """Start, use and stop one single-node Ceph cluster with a gateway in *folder*."""

    def __init__(self, folder: str | os.PathLike, access_key: str = "HUBADMIN", secret_key: str = "hub-admin-secret"):
        self.folder = Path(folder)
        self.access_key, self.secret_key = access_key, secret_key
        self.conf = self.folder / "ceph.conf"
        self.mon_port = free_port()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _config(self, fsid: str) -> str:
        d = self.folder
        return f"""[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{self.mon_port}
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_max_pg_per_osd = 1000
paxos_propose_interval = 0.05
osd_objectstore = memstore
memstore_device_bytes = 536870912
run_dir = {d}
log_file = {d}/$name.log
admin_socket = {d}/$name.asok
pid_file = {d}/$name.pid
mon_data = {d}/mon
osd_data = {d}/osd
keyring = /dev/null
[client.rgw]
rgw_frontends = beast endpoint=127.0.0.1:{self.port}
rgw_sts_key = cloudidentitysts
rgw_s3_auth_use_sts = true
rgw_enable_apis = s3, admin, sts, iam
"""

    def _run(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}\n{self.logs()}")
        return done.stdout

    def start(self, timeout: float = 60) -> CephGateway:
        (self.folder / "mon").mkdir(parents=True, exist_ok=True)
        (self.folder / "osd").mkdir(exist_ok=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(self._config(fsid))
        conf = str(self.conf)
        monmap = str(self.folder / "monmap")
        self._run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", "--fsid", fsid, monmap)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "-c", conf)
        self._run("ceph-mon", "-i", "a", "-c", conf)  # daemonizes
        self._run("ceph", "-c", conf, "osd", "create", timeout=timeout)
        self._run("ceph-osd", "-i", "0", "--mkfs", "-c", conf)
        self._run("ceph-osd", "-i", "0", "-c", conf)
        self._run("radosgw", "-n", "client.rgw", "-c", conf)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"radosgw did not listen on {self.port} within {timeout} s\n{self.logs()}") from None
                time.sleep(0.1)
        self._run("radosgw-admin", "-c", conf, "user", "create", "--uid", "hubadmin", "--display-name", "hub admin",
                  "--access-key", self.access_key, "--secret-key", self.secret_key)
        self._run("radosgw-admin", "-c", conf, "caps", "add", "--uid", "hubadmin", "--caps", ADMIN_CAPS)
        return self

    def user(self, uid: str, access_key: str, secret_key: str) -> dict[str, Any]:
        """Another account of the store (no capabilities): its client arguments."""
        self._run("radosgw-admin", "-c", str(self.conf), "user", "create", "--uid", uid, "--display-name", uid,
                  "--access-key", access_key, "--secret-key", secret_key)
        return self.client_kwargs(access_key, secret_key)

    def client_kwargs(self, access_key: str, secret_key: str, token: str | None = None) -> dict[str, Any]:
        kwargs = {"endpoint_url": self.url, "region_name": "us-east-1", "aws_access_key_id": access_key,
                  "aws_secret_access_key": secret_key}
        if token:
            kwargs["aws_session_token"] = token
        return kwargs

    def admin_kwargs(self) -> dict[str, Any]:
        """boto3 client arguments of the account with the role and OIDC provider capabilities."""
        return self.client_kwargs(self.access_key, self.secret_key)

    def logs(self, lines: int = 30) -> str:
        out = []
        for log in sorted(self.folder.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        """Kill the daemons (by their pid files: all state is in memory and in the folder, so
        nothing is lost that a test needs) and wait until they are gone."""
        pids = []
        for pid_file in self.folder.glob("*.pid"):
            try:
                pids.append(int(pid_file.read_text().strip()))
            except (OSError, ValueError):
                continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.02)
