# syntax=docker/dockerfile:1.7
# latentops GPU worker image (CUDA).
#
# Build from the repository root:  docker build -f deploy/docker/worker-cuda.Dockerfile -t latentops/worker-cuda:TAG .
# Run one container per GPU:  latentops worker --queues gpu --gpus 0
#
# The torch wheels on PyPI carry the CUDA runtime, cuDNN and NCCL themselves (the nvidia-* wheels),
# so the image needs no CUDA toolkit: the NVIDIA container toolkit mounts the host's driver
# (libcuda, libnvidia-ml for the GPU metrics) when the container asks for a GPU. The host driver
# must support the CUDA version torch was built for (see `nvidia-smi` and torch.version.cuda).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim

# nsfwjs (MIT), the default nudity detector of content screening: npm packs the package here and the
# build stage converts its model to PyTorch (latentops.governance.nsfwjs) into the venv's
# share/latentops/nsfwjs, where screening finds it. Nothing from this stage but the package is kept.
FROM ${NODE_IMAGE} AS nsfwjs
WORKDIR /pkg
RUN npm pack --silent nsfwjs@4.3.0 && sha256sum nsfwjs-4.3.0.tgz

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
RUN python - <<'PY' > /tmp/requirements.txt
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
# GPU workers also take 8-bit AdamW (the optional bitsandbytes).
print("\n".join(project["dependencies"] + project["optional-dependencies"]["bnb"]))
PY
RUN pip install -r /tmp/requirements.txt
COPY core core
COPY platform platform
COPY governance governance
COPY pipelines pipelines
COPY migrations migrations
RUN pip install --no-deps . && python -c "import torch, latentops.platform.queue.app; print(torch.__version__, torch.version.cuda)"
COPY --from=nsfwjs /pkg/nsfwjs-4.3.0.tgz /tmp/nsfwjs-4.3.0.tgz
RUN python -m latentops.governance.nsfwjs convert --package /tmp/nsfwjs-4.3.0.tgz --out /opt/venv/share/latentops/nsfwjs \
 && rm /tmp/nsfwjs-4.3.0.tgz

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="latentops-worker-cuda" org.opencontainers.image.description="latentops GPU worker"
RUN apt-get update && apt-get install -y --no-install-recommends tini libgomp1 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/latentops --create-home latentops
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LATENTOPS_MODE=production \
    LATENTOPS_HOME=/var/lib/latentops \
    LATENTOPS_WORKER_METRICS_PORT=9100 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
USER 10001
WORKDIR /var/lib/latentops
EXPOSE 9100
ENTRYPOINT ["tini", "--", "latentops"]
CMD ["worker", "--queues", "gpu", "--gpus", "0"]
