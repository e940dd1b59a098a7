# Two entry points (see README.md): `make plan` and `make test`.
# Both create .venv with the interpreter in $(PYTHON) and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

.PHONY: install install-test plan test
install: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e .

install-test: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[test]'

plan: install
	$(BIN)/cloudidentity-spawner plan --config examples/aws/jupyterhub_config.py \
		--user alice --claims examples/claims/escape-iam-alice.json

test: install-test
	$(BIN)/python -m pytest
