# Two commands on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install data browser demo test bench clean

# torch is pinned in the same pip command so the local CPU wheel is used (pyproject keeps the range open).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0" -e ".[test,ray]"
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST IDX files from Debian (MIT licence); skipped where apt is unavailable
# (the demo then uses the subset shipped in src/diffmem/assets).
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist; tests needing it will skip"; \
	fi

# Headless Chromium for the report's browser test; that test skips, saying why, where this fails.
browser:
	@if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
		|| echo "note: could not install chromium; the browser test will skip"; \
	fi

demo: install data
	$(PY) -m diffmem demo --out demo_out

test: install data browser
	@$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

bench: install data
	$(PY) -m diffmem theory bench

clean:
	rm -rf $(VENV) demo_out .pytest_cache
