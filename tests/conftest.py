"""Test configuration: float64 for golden comparisons, and the location of ../shared."""

import jax

jax.config.update("jax_enable_x64", True)
