# The two README commands: `make demo` (the default pipeline) and `make test` (the test suite).
# Each creates the virtual environment .venv on first use (pip, Python 3.11, CPU is enough).
PYTHON ?= python3
VENV ?= .venv
CORES ?= all
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

.PHONY: venv demo test lint clean-venv

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --profile profiles/local

test: $(STAMP)
	@$(VENV)/bin/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5)"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

clean-venv:
	rm -rf $(VENV)
