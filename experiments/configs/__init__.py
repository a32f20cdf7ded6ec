"""Experiment configs: frozen dataclasses with named presets, overridable from the command line."""

from experiments.configs.overrides import apply_overrides, config_to_dict

__all__ = ["apply_overrides", "config_to_dict"]
