# syntax=docker/dockerfile:1
# streamer container image: docker build -t streamer:0.1.0 .
# Linted in CI by hadolint and parsed with BuildKit's parser (tests/deploy/test_dockerfile.py).

# --- build stage: a virtual environment in /opt/streamer, copied whole into the runtime stage -----------------
FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/streamer
ENV PATH=/opt/streamer/bin:$PATH
# No torch: the daemon (and score, evaluate, replay) run the compiled kernel on numpy weights; torch is the
# `train` extra only (754 MB installed, CPU build), so the image is that much smaller. Train elsewhere.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamer ./streamer
RUN pip install --no-cache-dir . \
 && streamer --version \
 && python -c "import sys, streamer.daemon.loop; assert 'torch' not in sys.modules"

# --- runtime stage ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
# Same uid/gid as runAsUser/fsGroup in deploy/k8s; no home directory, no login shell.
RUN groupadd --system --gid 10001 streamer \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin streamer \
 && mkdir -p /etc/streamer /var/lib/streamer \
 && chown 10001:10001 /var/lib/streamer
COPY --from=builder /opt/streamer /opt/streamer
# MALLOC_ARENA_MAX=2: glibc malloc with two arenas, as the systemd unit (~2.4 MiB lower peak RSS, docs/perf.md).
ENV PATH=/opt/streamer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMER_METRICS__HOST=0.0.0.0 \
    STREAMER_CHECKPOINT__PATH=/var/lib/streamer \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MALLOC_ARENA_MAX=2
USER 10001:10001
WORKDIR /var/lib/streamer
EXPOSE 9108
# For `docker run`; Kubernetes uses the probes in deploy/k8s instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["streamer"]
# --config is an option of `streamer` itself: it goes before the command.
CMD ["--config", "/etc/streamer/config.toml", "run"]
