# The operator image: Debian bookworm-slim with Debian's Python 3.11 and the ctxext package in a venv;
# no torch (the operator and planner import without it); runs as uid/gid 10001.
#
#   scripts/build-images.sh            (docker when present, else buildah; see the README, "Container images")
#   docker build -t ghcr.io/ctxext/operator:0.1.0 .
#
# The base is pinned by digest; bump tag and digest together:
#   docker buildx imagetools inspect debian:bookworm-slim --format '{{json .Manifest.Digest}}'
# CI, which cannot pull, builds the same Debian release locally with mmdebstrap and passes it as
# BASE_IMAGE (scripts/build-images.sh --base-from-debs). tests/chart/test_images.py checks the pin.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251

FROM ${BASE_IMAGE} AS build
# A CA bundle for pip mounted read-only into the build (buildah bud -v FILE:/run/ca.crt:ro); never copied
# into the image. Empty: pip's own bundle.
ARG BUILD_CA_CERT=""
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer_image/ctxext_trainer ./trainer_image/ctxext_trainer
# The base install only: no [trainer] extra, so no torch, DeepSpeed or transformers in this image.
RUN if [ -n "$BUILD_CA_CERT" ]; then export PIP_CERT="$BUILD_CA_CERT"; fi \
 && /opt/venv/bin/pip install . \
 && /opt/venv/bin/pip uninstall -y pip setuptools \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="ctxext operator" \
      org.opencontainers.image.description="Kubernetes operator that extends LLM context windows by RoPE theta scaling" \
      org.opencontainers.image.source="https://github.com/ctxext/ctxext" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ctxext
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# No torch in this image, and the operator and planner import without it; fail the build otherwise.
RUN python -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && python -c "import ctxext, ctxext.cli.main, ctxext.planner, ctxext.controller"
# Numeric user, so that Kubernetes' runAsNonRoot can verify it (the chart runs it as 10001:10001 with a
# read-only root filesystem and a writable /tmp).
USER 10001:10001
# 8080: /metrics (CTXEXT_METRICS_PORT), 8081: /healthz (CTXEXT_HEALTH_PORT), the operator's defaults.
EXPOSE 8080 8081
ENTRYPOINT ["ctxext"]
CMD ["operator"]
