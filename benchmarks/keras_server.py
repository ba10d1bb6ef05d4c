"""The source article's way of serving, for comparison only: Keras `model.predict` on each request.

    python -m benchmarks.keras_server MODEL.keras PORT

Same multipart field and image preparation as the service (service.imaging), so only the model runtime and the
missing batcher differ.
"""

import os
import sys
from typing import Annotated

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import uvicorn
from fastapi import FastAPI, File, UploadFile

from service.imaging import decode_image


def create_app(model_path: str) -> FastAPI:
    """A FastAPI app that runs `model.predict` per request."""
    model = keras.saving.load_model(model_path)
    app = FastAPI()

    @app.get("/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    async def predict(files: Annotated[list[UploadFile], File()]) -> dict[str, list[int]]:
        images = np.stack(
            [decode_image(await f.read(), filename=f.filename or "", size=(32, 32), max_pixels=10**8) for f in files]
        )
        probabilities = model.predict(images, verbose=0)
        return {"labels": probabilities.argmax(axis=1).tolist()}

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
