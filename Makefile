# Fresh machine: `make demo` (set up + run the embedded default), `make test` (set up + all tests).
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := prometheus systemd

.PHONY: setup system-deps demo test lint model run bench

setup: $(VENV)/.installed

# torch first and pinned: its CPU wheel is on this disk; a bare `torch` requirement would pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Debian packages the end-to-end and deployment tests use (Prometheus, promtool, systemd-analyze).
system-deps:
	@missing=""; for tool in prometheus promtool systemd-analyze; do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else echo "missing Debian packages: sudo apt-get install $(APT_PACKAGES)"; exit 1; fi; fi

demo: setup
	$(VENV)/bin/streamer demo

test: setup system-deps
	$(PY) -m pytest -q

# The bundled model, reproducibly: a synthetic (non-NAB) corpus, then the trainer (~4 min on 2 cores).
# Run with default settings (no STREAMER_* overrides): the trainer cuts sequences with the configured resets.
model: setup
	mkdir -p build/corpus
	$(VENV)/bin/streamer synth --output build/corpus/train.jsonl.gz --streams 800 --length 2500 --seed 1 \
	    --anomalies --anomaly-fraction 0.3 --segment-fraction 0.05
	$(VENV)/bin/streamer train build/corpus/train.jsonl.gz --output streamer/data/default_model.npz \
	    --hidden-size 64 --epochs 24 --batch 128 --chunk 64 --lr 0.002 --seed 0 --patience 4

lint: setup
	$(VENV)/bin/ruff check streamer tests benchmarks

run: setup
	$(VENV)/bin/streamer --config config.toml run

# Throughput, memory and latency against a local broker (docs/perf.md): development tooling, outside the package.
bench: setup
	$(PY) -m benchmarks.bench
