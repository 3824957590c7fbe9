"""The trainer: QT-Opt in torch, datasets, pre-training, fine-tuning, ONNX export."""
