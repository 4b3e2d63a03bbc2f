.PHONY: setup run test test-slow quality style bench bench-quick

VENV ?= .venv
PY := $(VENV)/bin/python
CHECK_DIRS := src tests benchmarks scripts

# Every target that runs code sets the machine up first (a no-op once done).
setup:
	bash scripts/setup.sh

# The main job: default recipe + random baseline + comparison (4 to 15 minutes on 2 CPU cores, by CPU).
run: setup
	bash scripts/run_default.sh

# The side-by-side benchmark of DESIGN §8, scratch and ResNet fine-tuning (about 3 hours on 2 CPU cores; resumes when
# interrupted).
bench: setup
	$(PY) benchmarks/active_learning.py

bench-quick: setup
	$(PY) benchmarks/active_learning.py --quick

# Two pytest-xdist workers: on 2 CPU cores the suite waits on process start-ups and single-threaded Python much of the
# time (`make test TEST_WORKERS=0` runs it in one process).
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS)

test-slow: setup
	$(PY) -m pytest -m slow

quality: setup
	$(VENV)/bin/ruff check $(CHECK_DIRS)
	$(VENV)/bin/ruff format --check $(CHECK_DIRS)

style: setup
	$(VENV)/bin/ruff check --fix $(CHECK_DIRS)
	$(VENV)/bin/ruff format $(CHECK_DIRS)
