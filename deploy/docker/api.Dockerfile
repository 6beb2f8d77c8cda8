# syntax=docker/dockerfile:1.7
# latentops API and CPU worker image.
#
# Build from the repository root:  docker build -f deploy/docker/api.Dockerfile -t latentops/api:TAG .
# The same image runs `latentops serve`, `latentops worker --queues cpu`, `latentops db upgrade` and
# the audit CronJobs, and `latentops policy bundle` builds the OPA bundle from the policies it
# ships, so the policies OPA enforces always match the code that asks them.
#
# TORCH_INDEX_URL: PyPI's Linux torch wheels are CUDA builds (several GB). The API never runs a
# model on a GPU, so a site with a mirror of CPU-only wheels can point this at it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# nsfwjs (MIT), the default nudity detector of content screening: npm packs the package here and the
# build stage converts its model to PyTorch (latentops.governance.nsfwjs) into the venv's
# share/latentops/nsfwjs, where screening finds it. Nothing from this stage but the package is kept.
FROM ${NODE_IMAGE} AS nsfwjs
WORKDIR /pkg
RUN npm pack --silent nsfwjs@4.3.0 && sha256sum nsfwjs-4.3.0.tgz

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so a code change does not reinstall torch.
COPY pyproject.toml setup.py README.md ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1; fi \
 && python - <<'PY' > /tmp/requirements.txt
import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))
PY
RUN pip install -r /tmp/requirements.txt
COPY core core
COPY platform platform
COPY governance governance
COPY pipelines pipelines
COPY migrations migrations
RUN pip install --no-deps . && python -c "import latentops.platform.api.app"
COPY --from=nsfwjs /pkg/nsfwjs-4.3.0.tgz /tmp/nsfwjs-4.3.0.tgz
RUN python -m latentops.governance.nsfwjs convert --package /tmp/nsfwjs-4.3.0.tgz --out /opt/venv/share/latentops/nsfwjs \
 && rm /tmp/nsfwjs-4.3.0.tgz

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="latentops" org.opencontainers.image.description="latentops API and CPU worker"
RUN apt-get update && apt-get install -y --no-install-recommends tini libgomp1 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/latentops --create-home latentops
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LATENTOPS_MODE=production \
    LATENTOPS_HOME=/var/lib/latentops \
    LATENTOPS_API_HOST=0.0.0.0 \
    LATENTOPS_API_PORT=8000 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
USER 10001
WORKDIR /var/lib/latentops
EXPOSE 8000 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/metrics', timeout=4)" || exit 1
ENTRYPOINT ["tini", "--", "latentops"]
CMD ["serve"]
