"""Response bodies, as they appear in the OpenAPI schema."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LabelProbability(BaseModel):
    """One label and the probability the model gives it."""

    label: str
    probability: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    """The answer for one uploaded image."""

    filename: str
    label: str = Field(description="the most probable label")
    probability: float = Field(ge=0, le=1, description="its probability")
    top_k: list[LabelProbability] = Field(description="the most probable labels, most probable first")


class ModelRef(BaseModel):
    """Which model answered (also in the X-Model header, `name/version/digest`)."""

    name: str
    version: str
    digest: str = Field(description="the first 12 hex digits of the model file's SHA-256")


class PredictResponse(BaseModel):
    """Predictions in the order the files were uploaded."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": {"name": "cifar10-resnet9", "version": "3.0.0", "digest": "4f3c2a1b9e8d"},
                    "predictions": [
                        {
                            "filename": "cat.jpg",
                            "label": "cat",
                            "probability": 0.81,
                            "top_k": [
                                {"label": "cat", "probability": 0.81},
                                {"label": "dog", "probability": 0.12},
                                {"label": "frog", "probability": 0.03},
                            ],
                        }
                    ],
                }
            ]
        }
    )

    model: ModelRef
    predictions: list[Prediction]


class ModelStatus(BaseModel):
    """A status, and the model being served (None until it is loaded)."""

    status: str
    model: str | None
    version: str | None
    digest: str | None = None
    provider: str | None


SERVED_EXAMPLE = {
    "model": "cifar10-resnet9",
    "version": "3.0.0",
    "digest": "4f3c2a1b9e8d",
    "provider": "CPUExecutionProvider",
}


class HealthResponse(ModelStatus):
    """Liveness: the process answers. Names the model once it is loaded."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok", **SERVED_EXAMPLE}]})

    status: Literal["ok"] = "ok"


class ReadinessResponse(ModelStatus):
    """Readiness: 200 once the model is loaded and warmed up; 503 before, and while draining."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ready", **SERVED_EXAMPLE}]})

    status: Literal["ready", "not_ready", "draining"]


class TensorSpec(BaseModel):
    """A model input or output."""

    name: str
    shape: list[int | None] = Field(description="None for the dynamic batch dimension")
    dtype: str
    layout: str | None = None


class ModelMetadataResponse(BaseModel):
    """What the service serves: the model, its tensors, labels and the execution provider in use."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "cifar10-resnet9",
                    "version": "3.0.0",
                    "digest": "4f3c2a1b9e8d",
                    "input": {
                        "name": "image",
                        "shape": [None, 32, 32, 3],
                        "dtype": "uint8",
                        "layout": "NHWC",
                    },
                    "output": {
                        "name": "probabilities",
                        "shape": [None, 10],
                        "dtype": "float32",
                        "layout": None,
                    },
                    "labels": ["airplane", "automobile", "bird", "cat", "deer"],
                    "provider": "CPUExecutionProvider",
                    "providers": ["CPUExecutionProvider"],
                    "eval_accuracy": 0.9006,
                    "resize_filter": "bicubic",
                    "metadata": {"architecture": "resnet9-w24"},
                }
            ]
        }
    )

    name: str
    version: str
    digest: str
    input: TensorSpec
    output: TensorSpec
    labels: list[str]
    provider: str
    providers: list[str]
    eval_accuracy: float | None
    resize_filter: str
    metadata: dict[str, str]


class ErrorResponse(BaseModel):
    """Every error: a stable code and a message naming what was wrong."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": "invalid_image", "detail": "'notes.txt' is not an image ..."}]}
    )

    error: str
    detail: str


class ProtocolErrorResponse(BaseModel):
    """An Open Inference Protocol error: the message its clients show, and a stable code."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"error": "unknown model 'resnet'; this server serves ...", "code": "not_found"}]
        }
    )

    error: str
    code: str


class ServerLiveResponse(BaseModel):
    """Open Inference Protocol liveness (the status code is the answer; the body says the same)."""

    live: bool


class ServerReadyResponse(BaseModel):
    """Open Inference Protocol readiness: 200 and true once the model is loaded and warmed up, else 503 and false."""

    ready: bool


class ModelReadyResponse(BaseModel):
    """Open Inference Protocol model readiness."""

    name: str
    ready: bool
