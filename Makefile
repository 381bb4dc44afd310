# Two commands on a fresh machine: `make demo` (the main job on the default model) and `make test`.
# Both create .venv/ at the repository root on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test lint venv clean

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

# pytest exits 5 when nothing was collected; that is not a failure of the code.
test: $(STAMP)
	$(PY) -m pytest test -q -ra; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check evit_ros test launch

clean:
	rm -rf $(VENV) build install log *.egg-info

# The documentation in doc/ (MyST pages, built as rosdoc2 builds ROS package docs): warnings are errors, so a
# broken link or reference fails the build. Output: build/docs/html/index.html.
.PHONY: docs
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html doc build/docs/html
