# Two entry points: `make demo` and `make test`. Both build .venv first if it is
# missing or stale (tools/bootstrap_env.sh keys it on the dependency files).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: env demo test clean-env

env:
	@bash tools/bootstrap_env.sh

demo: env
	$(PY) -m eqv2_plugin.demo

test: env
	$(PY) -m pytest $(PYTEST_ARGS)

clean-env:
	rm -rf .venv
