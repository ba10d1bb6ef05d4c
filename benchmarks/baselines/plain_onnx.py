"""Baseline: the 30-line FastAPI + ONNX Runtime server, one `session.run` per request in a `def` endpoint.

BASELINE_MODEL=models/default.onnx uvicorn benchmarks.baselines.plain_onnx:app --port 8002
"""

import json
import os
from typing import Annotated

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile
from PIL import Image

session = ort.InferenceSession(
    os.environ.get("BASELINE_MODEL", "models/default.onnx"), providers=["CPUExecutionProvider"]
)
labels = json.loads(session.get_modelmeta().custom_metadata_map["class_names"])
input_name = session.get_inputs()[0].name
_, height, width, _ = session.get_inputs()[0].shape
app = FastAPI()


@app.post("/predict")
def predict(files: Annotated[list[UploadFile], File()]) -> dict[str, list[dict[str, object]]]:
    images = [np.asarray(Image.open(upload.file).convert("RGB").resize((width, height))) for upload in files]
    (probabilities,) = session.run(None, {input_name: np.stack(images)})
    best = probabilities.argmax(axis=1)
    return {
        "predictions": [
            {"filename": upload.filename, "label": labels[index], "probability": float(row[index])}
            for upload, row, index in zip(files, probabilities, best, strict=True)
        ]
    }


@app.get("/ready")
async def ready() -> dict[str, str]:
    return {"status": "ready"}
