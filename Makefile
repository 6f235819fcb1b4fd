# Set-up and the two commands of the README. Everything installs into .venv.
#   make demo    train a tiny Backpack on Shakespeare (CPU, ~4 minutes) and show samples and senses
#   make test    run the test suite
#   make bench   run the benchmarks (writes bench/results/*.json); the longer experiment scripts
#                (bench/senses_world.py, topic_control.py, topic_headroom.py, heads_example.py, gist_savings.py,
#                gist_world.py, gist_t5_savings.py, shakespeare_senses.py) run by hand
# On another machine pick your own torch build, e.g. `make test TORCH_SPEC="torch==2.5.1"`.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first (on this machine the CPU wheel lies on disk), then the package with a constraint that keeps that torch,
# so no dependency can pull another (multi-GB) torch build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-constraint.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/backpack demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	for script in bench/naive_backpack.py bench/train_throughput.py bench/generation.py bench/train_memory.py bench/profile_train.py bench/heads_importance.py; do $(BIN)/python $$script || exit 1; done
	$(BIN)/python bench/report.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
