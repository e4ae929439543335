# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install bytecode demo test test-durations lint bench clean orthanc

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch is pinned (constraints.txt) for every install so that pip never swaps in a CUDA build.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[test,dev]"
	@if $(PIP) list 2>/dev/null | grep -qiE '^nvidia-'; then \
		echo "error: a dependency pulled CUDA packages (nvidia-*) into $(VENV); pin it in constraints.txt" >&2; exit 1; fi
	touch $(STAMP)

install: $(STAMP)

# Our own modules compiled ahead, as pip does for installed wheels: every Ray actor and driver imports them,
# and an environment with PYTHONDONTWRITEBYTECODE set would otherwise compile them from source in each one.
bytecode: $(STAMP)
	$(PY) -m compileall -q tiler pipelines bench

demo: bytecode
	$(VENV)/bin/tiler demo

# The tests start a real PACS (Orthanc, with its DICOMweb plugin for STOW-RS) on loopback: Debian's packages.
ORTHANC_PLUGIN := /usr/share/orthanc/plugins/libOrthancDicomWeb.so
orthanc:
	@if [ ! -x /usr/sbin/Orthanc ] || [ ! -f $(ORTHANC_PLUGIN) ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb \
		|| { echo "error: the tests need Orthanc: install the Debian packages orthanc and orthanc-dicomweb" >&2; exit 1; }; \
	fi

# Each test file runs whole on one worker (its module fixtures run once), longest files first (tests/durations.json,
# refreshed by `make test-durations`), so no worker ends the run alone on a long file.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: bytecode orthanc
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

test-durations: bytecode orthanc
	$(PY) -m pytest -q $(PYTEST_PARALLEL) --write-durations

lint: $(STAMP)
	$(VENV)/bin/ruff check tiler pipelines tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: bytecode
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) demo-output
