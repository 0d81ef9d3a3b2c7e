# The two commands of the README. Both create .venv with pip and install the project first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test install clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m spikeformer train

# Debian's chromium lets one test open the HTML report in a headless browser; installed when we may (root + apt-get).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium is not installed: the browser test of the HTML report will be skipped"

# Two pytest workers (pytest-xdist): much of the suite is single-threaded Python (torch.compile tracing, data
# pipelines), so two processes use both cores (13 min -> 9 min on 2 cores). Each test still sees the same inputs.
# One thread per worker: with two each the 2 cores were oversubscribed (572 s -> 483 s of tests, fresh clone).
# The compiled CPU kernels are built (or found in the cache) first, once with both cores (about 25 s on a 2-core
# AVX2 VM), instead of by both workers at once; without a compiler this prints the fallback warning and goes on.
test: $(STAMP) chromium
	$(PY) -c "from spikeformer.kernels.cpu import build; build.require()"
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) build *.egg-info
