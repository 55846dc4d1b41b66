# The two set-up commands of the README: each bootstraps everything it needs.
PY := .venv/bin/python

.PHONY: bootstrap test lint demo bench clean

bootstrap:
	@bash scripts/bootstrap.sh

lint: bootstrap
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q
	bash scripts/switch_check.sh

demo: bootstrap
	$(PY) -m pgfunnel.demo

bench: bootstrap
	$(PY) bench/run.py

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
