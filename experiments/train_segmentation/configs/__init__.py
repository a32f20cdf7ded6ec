"""Presets of ``python -m experiments.train_segmentation``: one ``get_config()`` module each."""
