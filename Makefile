# The two README commands: `make demo` (the default pipeline) and `make test` (the test suite).
# Each creates the virtual environment .venv on first use (pip, Python 3.11, CPU is enough).
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
# GPUs the GPU rules may share (gpu=1 each); 0 on a machine without one, so that they run side by side on the CPU
GPUS ?= $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
# memory the jobs may hold together (MB): 90% of this machine's
MEM_MB ?= $(shell awk '/^MemTotal/ {printf "%d", $$2 * 1.024 * 0.9 / 1000}' /proc/meminfo 2>/dev/null || echo 16000)
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

.PHONY: venv demo test lint clean-venv

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --profile profiles/local --resources gpu=$(GPUS) mem_mb=$(MEM_MB)
	$(VENV)/bin/snakemake --report results/report.zip

# The README's demo numbers (the block between <!-- demo-numbers:begin --> and <!-- demo-numbers:end -->), rewritten
# from the outputs `make demo` left under results/; the rest of README.md is left as it is.
.PHONY: readme-numbers
readme-numbers: $(STAMP)
	$(VENV)/bin/python scripts/readme_numbers.py --results results --readme README.md

# pytest's exit status is make's: 5 (no tests collected) fails too. The science claims held at several seeds against
# their controls (tests marked `science`) are left to `make test-science`, which CI runs after `make test`.
test: $(STAMP) browser
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadgroup -m "not science" tests

.PHONY: test-science
test-science: $(STAMP)
	$(VENV)/bin/python -m pytest -q -rfEP -n 2 --dist loadgroup -m science --durations=10 tests

# Headless Chromium for the feature-browser test (Debian's chromium and chromium-driver; installed when missing and
# this runs as root; without them the browser test skips, except under .ci/run, where it must run)
.PHONY: browser
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
	    >/dev/null || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    chromium chromium-driver >/dev/null) || echo "installing chromium failed: the browser test will skip"; \
	  else echo "chromium / chromedriver missing (not root: the browser test will skip)"; fi; fi

# The real-SLURM test (needs root): installs Debian's slurm-wlm and munge, starts a one-node cluster on this host,
# runs tests/test_slurm.py on it, and stops every daemon it started, also when the test fails or is interrupted.
.PHONY: test-slurm
test-slurm: $(STAMP)
	tests/slurm/install_slurm.sh
	@trap 'tests/slurm/stop_slurm.sh' EXIT; trap 'exit 130' INT TERM; \
	tests/slurm/start_slurm.sh && \
	DIFFLENS_SLURM=1 SLURM_CONF=$${DIFFLENS_SLURM_DIR:-/tmp/difflens-slurm}/slurm.conf \
	$(VENV)/bin/python -m pytest -q -rs -s --durations=5 tests/test_slurm.py

# A full-size random-weight run through every rule (configs/paper_smoke.yaml; README, "Paper-size smoke run"; not
# part of `make test`): the paper models built once with seeded random weights into the hub mirror, the fixture
# data staged once where download_dataset looks, the pipeline, then each rule's time and peak memory (benchmarks).
PAPER_SMOKE ?= results/paper_smoke
.PHONY: paper-smoke
paper-smoke: $(STAMP)
	$(VENV)/bin/python tests/paper_models.py $(PAPER_SMOKE)/hub
	$(VENV)/bin/python tests/paper_data.py $(PAPER_SMOKE)
	$(VENV)/bin/snakemake --cores $(CORES) --profile profiles/local --resources gpu=$(GPUS) mem_mb=$(MEM_MB) \
	  --configfile configs/paper_smoke.yaml --replace-workflow-config \
	  --config results=$(PAPER_SMOKE) model_cache=$(PAPER_SMOKE)/model_cache hub_mirror=$(PAPER_SMOKE)/hub
	$(VENV)/bin/python bench/rule_times.py $(PAPER_SMOKE)/benchmarks

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean-venv:
	rm -rf $(VENV)
