# syntax=docker/dockerfile:1
# Images: `cpu` (default, slim Python + onnxruntime), `gpu` (CUDA 13 + cuDNN 9 + onnxruntime-gpu, which needs
# exactly those majors) and `train` (TensorFlow, for training and export). The serving images hold no TensorFlow.
#   docker build --target cpu -t image-classifier:cpu .
#   docker build --target gpu -t image-classifier:gpu .
#   docker build --target train -t image-classifier:train .

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG ONNXRUNTIME_GPU_VERSION=1.31.1

# ---- CPU serving -----------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN /opt/venv/bin/pip install ".[cpu]"

FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=cpu-build /opt/venv /opt/venv
COPY models/default.onnx /app/models/default.onnx
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CLASSIFIER_HOST=0.0.0.0 \
    CLASSIFIER_PORT=8000 \
    CLASSIFIER_MODEL_PATH=/app/models/default.onnx
WORKDIR /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-m", "service.healthcheck"]
CMD ["python", "-m", "service"]

# ---- GPU serving -----------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-build
ARG ONNXRUNTIME_GPU_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN /opt/venv/bin/pip install ".[gpu]" "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"

FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=gpu-build /opt/venv /opt/venv
COPY models/default.onnx /app/models/default.onnx
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CLASSIFIER_HOST=0.0.0.0 \
    CLASSIFIER_PORT=8000 \
    CLASSIFIER_MODEL_PATH=/app/models/default.onnx
WORKDIR /app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["python", "-m", "service.healthcheck"]
CMD ["python", "-m", "service"]

# ---- Training (TensorFlow) -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS train
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --system --uid 10001 --create-home --shell /usr/sbin/nologin app \
    && python -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
RUN /opt/venv/bin/pip install ".[cpu,train]"
USER 10001
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]
