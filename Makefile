# Two entry points (see README.md): `make demo` and `make test`; `make plan` shows one plan.
# Both create .venv with the interpreter in $(PYTHON) and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

.PHONY: install install-demo install-test demo plan test
install: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e .

install-demo: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[demo]'

demo: install-demo
	$(BIN)/cloudidentity-spawner demo

install-test: $(BIN)/activate
	$(BIN)/python -m pip install --quiet -e '.[test]'
	./scripts/install-chromium.sh

plan: install
	$(BIN)/cloudidentity-spawner plan --config examples/aws/jupyterhub_config.py \
		--user alice --claims examples/claims/escape-iam-alice.json

test: install-test
	$(BIN)/python -m pytest
