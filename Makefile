# Two entry points (see README.md): `make demo` and `make test`; `make plan` shows one plan,
# `make docs` builds the documentation. All create .venv with the interpreter in $(PYTHON)
# and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The oldest supported JupyterHub and KubeSpawner (their lower bounds in pyproject.toml; other
# packages as pip resolves them): the spawn-path tests run there too.
OLDEST_VENV ?= .venv-oldest
OLDEST_PINS := jupyterhub==5.0.0 jupyterhub-kubespawner==7.0.0
SPAWN_PATH_TESTS := tests/test_spawner_kube.py tests/test_profiles.py tests/test_startup.py tests/test_package.py \
	tests/test_aws.py tests/test_gcp.py tests/test_azure.py tests/test_dask.py tests/test_auth.py tests/test_browser.py

# One worker per CPU; a test file's tests stay together (they share its servers).
PYTEST_PARALLEL ?= -n auto --dist loadfile

.PHONY: install install-chromium install-ceph install-iam-judge install-demo install-test install-oldest demo docs plan test test-oldest
install: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e .

install-demo: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[demo]'

demo: install-demo
	$(BIN)/cloudidentity-spawner demo

install-test: $(BIN)/activate install-chromium install-ceph install-iam-judge
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'

# The documentation site (the test suite builds it too, with warnings as errors).
docs: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

install-chromium:
	./scripts/install-chromium.sh

# A real Ceph RADOS Gateway (STS, IAM, S3) for the s3_sts tests.
install-ceph:
	./scripts/install-ceph.sh

# The IAM policy tests' second judge (Node.js and @cloud-copilot/iam-simulate).
install-iam-judge:
	./scripts/install-iam-judge.sh

plan: install
	$(BIN)/cloudidentity-spawner plan --config examples/aws/jupyterhub_config.py \
		--user alice --claims examples/claims/escape-iam-alice.json

$(OLDEST_VENV)/bin/activate:
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip

install-oldest: $(OLDEST_VENV)/bin/activate install-chromium
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e '.[test]' $(OLDEST_PINS)

test-oldest: install-oldest
	$(OLDEST_VENV)/bin/python -m pytest $(PYTEST_PARALLEL) $(SPAWN_PATH_TESTS)

# Everything: the whole suite (docs build included) on the newest supported versions,
# then the spawn path on the oldest.
test: install-test
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)
	$(MAKE) test-oldest
