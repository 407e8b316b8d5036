# Two commands for a new user on Debian 12 (each sets up whatever is still missing):
#   make serve   run the demo contact center (kefu serve)
#   make test    lint, type-check, check the import contracts, run every test
.PHONY: setup serve test unit lint bench

PY := .venv/bin/python

setup:
	@scripts/bootstrap

serve: setup
	.venv/bin/kefu serve $(if $(CONFIG),--config $(CONFIG)) --data-dir $(or $(DATA_DIR),var)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

test: lint
	.venv/bin/pytest -p no:cacheprovider -q -rfEs

unit: setup
	.venv/bin/pytest -p no:cacheprovider -q tests/unit

bench: setup
	$(PY) -m bench.sip_load
