# The project's entry points. Every target but clean installs first: setup is a quick no-op once done.
PY := .venv/bin/python

.PHONY: setup lint test gate bench clean

setup:
	bash scripts/setup.sh

# Static checks run before the scenarios, so a finding fails `make test` (and CI) in seconds.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy --strict runtime
	.venv/bin/mypy harness bench

# pytest's exit 5 means it collected nothing: that must fail loudly, not pass as "no failures".
test: setup lint
	@echo "+ $(PY) -m pytest scenarios tests --profile ci --alluredir reports/allure-results --clean-alluredir"
	@$(PY) -m pytest scenarios tests --profile ci --alluredir reports/allure-results --clean-alluredir; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests under scenarios/" >&2; fi; \
	exit $$rc

gate: setup
	.venv/bin/harness gate all --profile quick

bench: setup
	$(PY) -m bench

clean:
	rm -rf reports/*
