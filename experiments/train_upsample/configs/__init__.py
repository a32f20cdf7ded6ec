"""Presets of ``python -m experiments.train_upsample``: one ``get_config()`` module each."""
