# One-command set-up on a fresh Debian machine: system libraries, virtualenv, packages.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSLIBS := xvfb xauth libgl1 libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libfreetype6 \
  libdbus-1-3 libxkbcommon0 libxkbcommon-x11-0 libx11-xcb1 libxcb-icccm4 libxcb-image0 \
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 \
  libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 fonts-dejavu-core

.PHONY: setup syslibs test test-fast demo napari bench clean

syslibs:
	@if ! command -v Xvfb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSLIBS) >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: pip takes the CPU build from local disk here; users with GPUs
	# install the CUDA build of their choice (pyproject only asks for torch>=2.2).
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.2"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "image-similarity-measures>=0.3"  # FSIM; its own deps would pull the GUI opencv
	touch $(STAMP)

setup: syslibs $(STAMP)

# pytest exits 5 when nothing was collected: reported, not a failure; every other code stands.
test: setup
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not gui" $(PYTEST_ARGS)

demo: setup
	$(BIN)/python -m napari_emdiffuse.demo --out demo_output

napari: setup
	$(BIN)/python -m napari_emdiffuse.demo --napari

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
