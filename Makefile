# One-command set-up: `make demo` runs the pipeline on a sample clip, `make test` runs the tests.
# Both create .venv when missing and (re)install when pyproject.toml changes; the test extra and the
# ray extra are installed, so the tests on a local Ray cluster run too.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages the live-source tests need: GStreamer's RTSP server (run with the system python3)
# and Chromium for the preview page check.
SYSTEM_PACKAGES := python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
	gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-libav \
	chromium xvfb openssl
SYSTEM_STAMP := .system-deps.installed

.PHONY: demo test lint bench system-deps clean gpu-suite gpu-wheels

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $(STAMP)

$(SYSTEM_STAMP):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		fi; \
	fi
	@# The stamp lists what is installed, and is written only when every package is there: otherwise the
	@# next run tries again, and the tests that need a missing package skip (or fail under
	@# REQUIRE_SYSTEM_DEPS=1, as in CI).
	@if dpkg-query -W -f='$${Package} $${Version}\n' $(SYSTEM_PACKAGES) > $(SYSTEM_STAMP).tmp 2>/dev/null; then \
		mv $(SYSTEM_STAMP).tmp $(SYSTEM_STAMP); \
	else \
		rm -f $(SYSTEM_STAMP).tmp; \
		echo "system packages missing (need root and apt-get): tests that use them will be skipped, or fail with REQUIRE_SYSTEM_DEPS=1"; \
		[ "$$REQUIRE_SYSTEM_DEPS" != 1 ]; \
	fi

system-deps: $(SYSTEM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/sapiens-stream demo

test: $(STAMP) $(SYSTEM_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Every benchmark prints its figures and writes JSON under benchmarks/results/ (CPU configuration;
# pass --device cuda to the model, postprocess and pipeline benchmarks on a GPU machine).
BENCHMARKS := model_throughput postprocess pipeline tracking smoothing render_encode live_latency

bench: $(STAMP) $(SYSTEM_STAMP)
	for b in $(BENCHMARKS); do $(PY) -m benchmarks.$$b || exit 1; done

# The GPU suite (benchmarks/gpu_suite.py): GPU tests, model throughput, pipeline and live latency in one
# run of at most 8 minutes, results in GPU_OUT. It runs through benchmarks/gpu_launch.sh, which installs
# nothing but the wheels in .whl/ (never torch), so it also runs on a bare GPU machine without .venv.
GPU_OUT ?= benchmarks/results/gpu_suite
gpu-suite:
	PYTHON=$$(test -x $(PY) && echo $(PY) || echo $(PYTHON)) benchmarks/gpu_launch.sh $(GPU_OUT)

# Wheels of what the suite imports and a GPU machine with torch and transformers lacks (CPython 3.12,
# manylinux x86_64), for benchmarks/gpu_launch.sh to install there. Downloaded here, never committed.
GPU_WHEELS := av==18.1.0 pyzmq==27.3.0
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
	manylinux1_x86_64
gpu-wheels: $(STAMP)
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(addprefix --platform ,$(GPU_PLATFORMS)) -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) $(SYSTEM_STAMP) .pytest_cache
