"""Sigma-Branch: dense backbones, the tree, conversion, fine-tuning and accounting."""
