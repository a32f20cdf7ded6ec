"""Presets of ``python -m experiments.train_flow``: one ``get_config()`` module each."""
