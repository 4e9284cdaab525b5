# starflow-jax: `make demo` and `make test` each create the virtual environment they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -q -n 2 --dist loadfile --durations=20
DEMO_DIR ?= demo_output

.PHONY: demo test venv format clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: venv
	$(PY) -m experiments.demo --out_dir=$(DEMO_DIR)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS) tests

format: venv
	$(PY) -m yapf -i -p $$(git ls-files --cached --others --exclude-standard '*.py')

clean:
	rm -rf $(VENV) $(DEMO_DIR)
