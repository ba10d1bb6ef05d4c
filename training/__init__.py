"""Train a CNN on CIFAR-10 or a folder of images with Keras, evaluate it, and export it to ONNX."""
