# Two commands do all set-up on a fresh Debian/Ubuntu machine:
#   make run    napari with the plugin docked and a sample image loaded
#   make test   everything the tests need, then the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Qt needs these X/xcb libraries; Xvfb gives the GUI tests a display.
DEBS := python3 python3-venv xvfb xauth libglib2.0-0 libgl1 libegl1 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-xkb1 libxcb-cursor0
# Without a display (CI, ssh) run under a virtual X server.
XRUN := $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1600x1000x24")

.PHONY: run test bench system-deps setup clean
run: setup
	$(XRUN) $(BIN)/python -m napari_dlvision

test: setup
	$(XRUN) $(BIN)/python -m pytest -q -n auto --durations=25 tests

bench: setup
	$(BIN)/python bench/bench_pixel_classifier.py
	$(BIN)/python bench/bench_unet.py
	$(BIN)/python bench/bench_classifier.py
	$(BIN)/python bench/bench_detector.py
	$(BIN)/python bench/bench_denoise.py --quick

system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	elif ! command -v xvfb-run >/dev/null && [ -z "$$DISPLAY" ]; then \
		echo "Install as root: apt-get install $(DEBS)"; exit 1; fi

setup: system-deps $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
