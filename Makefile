# The two set-up commands of the README. Each one installs what it needs first.
PYTHON ?= python3
# The CPU wheel; on a CUDA machine install your torch first and this step is skipped.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install quickstart test lint

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH_SPEC)"
	$(PYTHON) -m pip install -q -e ".[dev]"

quickstart: install
	$(PYTHON) train.py experiment=quickstart

test: install
	$(PYTHON) -m pytest -q -m "not slow and not gpu"

lint:
	$(PYTHON) -m ruff check .
