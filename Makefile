# The README's commands. Each one installs what it needs first, at the versions in constraints.txt.
PYTHON ?= python3
# The CPU wheel; on a CUDA machine install your torch first and this step is skipped.
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS ?= constraints.txt
# Where test-latest builds its throw-away environment of the newest releases.
LATEST_VENV ?= $(or $(TMPDIR),/tmp)/vqdiffusion-latest-venv
TEST_ARGS ?= -q -m "not slow and not gpu"
# Extra train.py overrides for 'make quickstart', e.g. ARGS="seed=1".
ARGS ?=

.PHONY: install install-bench quickstart test test-latest lock lint check-words

# The package with one of its extras (dev: tests and lint; bench: the benchmarks).
EXTRAS ?= dev

# Marks the environment of $(PYTHON) as installed with these extras; 'quickstart' and 'test'
# re-install only when pyproject.toml or the constraints are newer than it ('make install' always does).
INSTALLED = $(shell $(PYTHON) -c "import sys; print(sys.prefix)")/.vqdiffusion-$(EXTRAS)-installed

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	@touch "$(INSTALLED)"

$(INSTALLED): pyproject.toml $(CONSTRAINTS)
	$(MAKE) install

install-bench:
	$(MAKE) install EXTRAS=bench

quickstart: $(INSTALLED)
	$(PYTHON) train.py experiment=quickstart $(ARGS)

test: $(INSTALLED)
	@$(PYTHON) -m pytest --version
	$(PYTHON) -m pytest $(TEST_ARGS)

# The suite against the newest release of every dependency (torch stays at TORCH_SPEC), in a new
# environment: run it before 'make lock' so that the lock only ever moves to versions that pass.
test-latest:
	rm -rf "$(LATEST_VENV)"
	$(PYTHON) -m venv "$(LATEST_VENV)"
	"$(LATEST_VENV)/bin/python" -m pip install -q "$(TORCH_SPEC)"
	"$(LATEST_VENV)/bin/python" -m pip install -q --upgrade -e ".[dev]"
	@"$(LATEST_VENV)/bin/python" -m pytest --version
	"$(LATEST_VENV)/bin/python" -m pytest $(TEST_ARGS)

# Rewrites constraints.txt from the environment test-latest built (torch is left to 'install').
lock:
	@test -x "$(LATEST_VENV)/bin/python" || { echo "run 'make test-latest' first"; exit 1; }
	{ sed -n '/^#/p' $(CONSTRAINTS); \
	  "$(LATEST_VENV)/bin/python" -m pip freeze --exclude-editable | grep -v -i -E '^(torch|vqdiffusion)=='; \
	} > $(CONSTRAINTS).new && mv $(CONSTRAINTS).new $(CONSTRAINTS)

lint:
	$(PYTHON) -m ruff check .

check-words:
	bash .ci/check-words
