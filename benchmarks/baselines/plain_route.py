"""Baseline: a plain FastAPI multipart route, no model and no decoding; it reads each file and answers a small JSON.

uvicorn benchmarks.baselines.plain_route:app --port 8001
"""

from typing import Annotated

from fastapi import FastAPI, File, UploadFile

app = FastAPI()


@app.post("/predict")
async def predict(files: Annotated[list[UploadFile], File()]) -> dict[str, list[dict[str, object]]]:
    sizes = [len(await upload.read()) for upload in files]
    return {
        "predictions": [{"filename": upload.filename, "bytes": size} for upload, size in zip(files, sizes, strict=True)]
    }


@app.get("/ready")
async def ready() -> dict[str, str]:
    return {"status": "ready"}
