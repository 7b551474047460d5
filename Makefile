# The two commands: `make run` and `make test`. Both set up what they need first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Test processes (pytest-xdist): the suite mostly waits on the servers it starts, so
# several run side by side on two cores. "auto" is 4 for the suite, fewer for a few
# files, none for one (tests/conftest.py); 0 runs in one process (README.md, Tests).
PYTEST_WORKERS ?= auto
PYTEST_XDIST   := -n $(PYTEST_WORKERS) --dist loadfile
EXT    := agentd/_fastpath$(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')

.PHONY: run test lint system-deps ext clean bench

run: $(STAMP) $(EXT)
	$(VENV)/bin/agentd serve -c config.toml

test: $(STAMP) $(EXT) system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel Cython
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The compiled fast path, rebuilt in place whenever the .pyx changes. A C compiler is
# installed when it can be (as root with apt-get); without one the build says so and
# agentd runs on the pure-Python twin, so neither `make run` nor `make test` fails.
ext $(EXT): agentd/_fastpath.pyx $(STAMP)
	scripts/ensure-system-deps --optional cc
	$(PY) setup.py --quiet build_ext --inplace

# redis-server for the store tests; systemd-analyze, promtool and kubectl check deploy/;
# nginx and haproxy run in front of real instances (tests/test_lb_*.py); chromium shows
# the console in a real browser (tests/test_console.py).
system-deps:
	scripts/ensure-system-deps redis-server redis-cli systemd-analyze promtool kubectl nginx haproxy chromium

clean:
	rm -rf $(VENV) build *.egg-info agentd/_fastpath.c agentd/*.so

# The benchmark suite (bench/README.md): BENCH_ARGS="--quick" or "http-hello ws-idle" etc.
bench: $(STAMP) $(EXT)
	$(PY) -m pip install --quiet -e '.[bench]'
	scripts/ensure-system-deps wrk nginx redis-server
	$(PY) -m bench $(BENCH_ARGS)
