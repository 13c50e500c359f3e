# syntax=docker/dockerfile:1
# calexpress container image: `calexpress serve isr|characterize|calibrate`, `calexpress publish`, `processCcd.py`.
#
#   docker build -t calexpress:0.1.0 .
#   docker run --rm -p 9102:9102 -e CALEXPRESS_BROKERS=kafka:9092 calexpress:0.1.0 serve isr
#
# Stage 1 builds the calexpress wheel and a wheel of every dependency (compilers live only here, for
# dependencies without a binary wheel); stage 2 installs those wheels offline into a clean slim image that
# runs as an unprivileged user and holds no compiler.

ARG PYTHON_IMAGE=python:3.11-slim

############################ builder ############################
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential gfortran pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the wheel is built from (see .dockerignore).
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY pipeline ./pipeline
RUN pip wheel --wheel-dir /wheels . \
 && ls /wheels/calexpress-*.whl

############################ runtime ############################
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="calexpress" \
      org.opencontainers.image.description="Raw CCD frames to calibrated exposures and source catalogs in near real time" \
      org.opencontainers.image.licenses="GPL-3.0-or-later" \
      org.opencontainers.image.source="https://github.com/calexpress/calexpress"
# Caches go to /tmp so that the image also runs with a read-only root file system (the Helm chart mounts an
# emptyDir there); the metrics/health endpoint listens on all interfaces inside the container.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBA_CACHE_DIR=/tmp/cache/numba \
    XDG_CACHE_HOME=/tmp/cache \
    XDG_CONFIG_HOME=/tmp/config \
    MPLCONFIGDIR=/tmp/cache/matplotlib \
    CALEXPRESS_METRICS_HOST=0.0.0.0 \
    CALEXPRESS_METRICS_PORT=9102
RUN groupadd --system --gid 10001 calexpress \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/calexpress --create-home \
        --shell /usr/sbin/nologin calexpress
# Install from the builder's wheels only (no index, no compiler); the bind mount keeps them out of the layers.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/calexpress-*.whl \
 && calexpress --version
USER 10001:10001
WORKDIR /home/calexpress
EXPOSE 9102
# Kubernetes uses the chart's /healthz and /readyz probes; this is for plain `docker run ... serve <stage>`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CALEXPRESS_METRICS_PORT', '9102'), timeout=4)"]
ENTRYPOINT ["calexpress"]
CMD ["--help"]
