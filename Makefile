# Two entry points: `make demo` (main job) and `make test` (test suite).
# Both create or refresh the local .venv idempotently from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := False

.PHONY: venv demo test data clean

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[export,dev]"
	$(BIN)/python tests/test_timm_suite.py >/dev/null || echo "note: timm's test suite not fetched; tests/test_timm_suite.py retries"
	@touch $(STAMP)

venv: $(STAMP)

# Real offline data (Fashion-MNIST, Debian package); tests that need it skip without it.
data:
	@test -d /usr/share/datasets/fashion-mnist || \
	  (command -v apt-get >/dev/null && (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
	   echo "note: dataset-fashion-mnist not installed; Fashion-MNIST tests will skip")

demo: venv
	$(BIN)/lolvit demo

test: venv data
	$(BIN)/python -m pytest -n 2 -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
