"""Generative models for data augmentation."""
