# syntax=docker/dockerfile:1
# Images, all built on one Debian (bookworm) Python image:
#   cpu    the service on ONNX Runtime's CPU build (the default target)
#   gpu    the service on onnxruntime-gpu, with CUDA 13 and cuDNN 9 from NVIDIA's PyPI wheels (ONNX Runtime's
#          documented way): the host needs only the NVIDIA driver and the NVIDIA Container Toolkit
#   proxy  HAProxy from Debian's packages: the load balancer in front of the replicas in docker-compose.yml
#   train  TensorFlow, for training and export
# Python packages are installed from requirements/*.txt only (pinned, with hashes; `make lock` writes them from
# pyproject.toml). The serving images hold no TensorFlow and run as uid 10001 with a read-only root filesystem.
#   docker build -t image-classifier:cpu .
#   docker build --target gpu -t image-classifier:gpu .
# Where no registry can be reached, `make image` builds the base image from Debian's packages first.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# /models: where a named volume or a bind mount puts other model files (a new volume takes this owner).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin app \
    && mkdir /models && chown 10001:10001 /models

# ---- Python environments, from the lock files -------------------------------------------------------------------
FROM base AS cpu-packages
COPY requirements/cpu.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/requirements.txt \
    && /opt/venv/bin/pip check

FROM base AS gpu-packages
COPY requirements/gpu.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/requirements.txt \
    && /opt/venv/bin/pip check

FROM base AS train-packages
COPY requirements/train.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/requirements.txt \
    && /opt/venv/bin/pip check

# ---- Serving ----------------------------------------------------------------------------------------------------
FROM base AS serving
COPY service /app/service
COPY models/default.onnx /app/models/default.onnx
RUN python -m compileall -q /app/service
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    CLASSIFIER_HOST=0.0.0.0 \
    CLASSIFIER_PORT=8000 \
    CLASSIFIER_MODEL_PATH=/app/models/default.onnx
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-m", "service.healthcheck"]
CMD ["python", "-m", "service"]

FROM serving AS gpu
COPY --from=gpu-packages /opt/venv /opt/venv
# Where the NVIDIA wheels put CUDA and cuDNN (ONNX Runtime looks only on the loader's path); the driver's own
# libcuda.so.1 comes from the host, through the NVIDIA Container Toolkit.
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-m", "service.healthcheck"]

# ---- Load balancer (docker-compose.yml) ---------------------------------------------------------------------------
FROM base AS proxy
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/compose/haproxy.cfg /etc/haproxy/haproxy.cfg
COPY deploy/compose/errors /etc/haproxy/json-errors
USER haproxy
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/proxy/health', timeout=3)"]
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]

# ---- Training (TensorFlow) ----------------------------------------------------------------------------------------
FROM base AS train
COPY --from=train-packages /opt/venv /opt/venv
COPY service /app/service
COPY training /app/training
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app TF_CPP_MIN_LOG_LEVEL=2 KERAS_HOME=/tmp/keras
WORKDIR /app
USER 10001:10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# ---- CPU serving: the default target, so it comes last ------------------------------------------------------------
FROM serving AS cpu
COPY --from=cpu-packages /opt/venv /opt/venv
