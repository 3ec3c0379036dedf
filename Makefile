# The two commands of the README. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned so that setup takes a known build: on a machine without CUDA, pip finds the
# CPU wheel of 2.13.0. GPU users: install a CUDA build of torch into .venv first (see README).
TORCH ?= torch==2.13.0

.PHONY: setup train test clean

$(BIN)/equirl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(BIN)/equirl

setup: $(BIN)/equirl

# Main job: train the paper's A3C-matched soft Q-learner on Pong (a small CPU budget), then check
# the equivalence. Raise STEPS for a real run (10M steps is the usual Atari budget).
STEPS ?= 20000
train: setup
	$(BIN)/equirl train matched-q ALE/Pong-v5 --steps $(STEPS) --seed 0

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
