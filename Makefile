# The two commands a newcomer needs (see README.md): `make run` and `make test`.
# Each creates the virtual environment when it is missing or when pyproject.toml changed.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: run test env model ablation bench

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "emoframe needs Python 3.11 ($(PYTHON) not found); set PYTHON=..."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

env: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/emoframe label

test: $(STAMP)
	$(PY) -m pytest

model: $(STAMP)
	$(VENV)/bin/emoframe build-model

ablation: $(STAMP)
	$(VENV)/bin/emoframe ablate

bench: $(STAMP)
	$(PY) benchmarks/pipeline_bench.py
