"""Quantization-aware fine-tuning of the tree (Brevitas) and QONNX export; built in issue #4."""
