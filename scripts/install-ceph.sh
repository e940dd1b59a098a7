#!/usr/bin/env bash
# Debian's Ceph daemons, for the tests of the s3_sts provider against a real RADOS Gateway
# (cloudidentity_spawner/testing/ceph.py). Installs only when missing; needs root or sudo.
set -euo pipefail
if command -v radosgw >/dev/null 2>&1 && command -v ceph-mon >/dev/null 2>&1 && command -v ceph-osd >/dev/null 2>&1; then
  exit 0
fi
"$(dirname "$0")/apt-install.sh" radosgw ceph-mon ceph-osd ceph-common
radosgw --version
