# The operator image: slim Python, no torch (the operator and planner import without it), non-root.
#
#   docker build -t ghcr.io/ctxext/operator:0.1.0 .
#
# The base image is pinned by digest (python:3.11.10-slim-bookworm); bump the tag and the digest together:
# docker buildx imagetools inspect python:<tag> --format '{{json .Manifest.Digest}}'.
# tests/chart/test_images.py checks that every FROM carries a digest.
ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm@sha256:840e180ebcc6e5c8efab209c43f5e40fd2af98cb49db5c7103c90539c56bb30e

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer_image/ctxext_trainer ./trainer_image/ctxext_trainer
# The base install only: no [trainer] extra, so no torch, DeepSpeed or transformers in this image.
RUN pip install --prefix=/install .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="ctxext operator" \
      org.opencontainers.image.description="Kubernetes operator that extends LLM context windows by RoPE theta scaling" \
      org.opencontainers.image.source="https://github.com/ctxext/ctxext" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /install /usr/local
# No torch in this image, and the operator and planner import without it; fail the build otherwise.
RUN python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
 && python -c "import ctxext, ctxext.cli.main, ctxext.planner, ctxext.controller" \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ctxext
# Numeric user, so that Kubernetes' runAsNonRoot can verify it (the chart runs it as 10001:10001 with a
# read-only root filesystem and a writable /tmp).
USER 10001:10001
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# 8080: /metrics (CTXEXT_METRICS_PORT), 8081: /healthz (CTXEXT_HEALTH_PORT), the operator's defaults.
EXPOSE 8080 8081
ENTRYPOINT ["ctxext"]
CMD ["operator"]
