# shopspc — the two commands of the quick start, plus bench and lint.
# Everything installs itself: a .venv for Python, Debian packages for the
# real servers the integration tests start (mosquitto, influxdb 1.x,
# victoria-metrics) and headless Chromium for the web screens' browser tests, when missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
SERVER_BINS := mosquitto influxd victoria-metrics chromium chromedriver
SERVER_PKGS := mosquitto influxdb victoria-metrics chromium chromium-driver

.PHONY: demo test bench lint venv servers broker clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check --upgrade pip
	$(PIP) install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages for the integration tests' real servers; one apt-get update, only when needed.
servers:
	@missing=""; for b in $(SERVER_BINS); do command -v $$b >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(SERVER_PKGS) with apt-get"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(SERVER_PKGS) >/dev/null; \
	fi

# The demo's MQTT station needs a broker: Debian mosquitto, started by the demo itself on a
# loopback port (no system service). Installed here when missing.
broker:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
	  echo "installing mosquitto with apt-get (the demo's MQTT broker)"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null; }

demo: $(STAMP) broker
	$(VENV)/bin/shopspc demo --live

test: $(STAMP) servers
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

bench: $(STAMP) servers
	$(PY) -m benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
