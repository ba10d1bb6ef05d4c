"""FastAPI + ONNX Runtime image-classification service; never imports TensorFlow."""
