"""Denoising with DnCNN: training data and noise, training, applying a model, and evaluation against baselines."""
