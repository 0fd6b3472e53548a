# The two commands of the README: `make run` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test setup clean-venv

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	scripts/setup.sh dev
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/crowdwatch run --config config.toml

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
