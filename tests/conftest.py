"""Test configuration: float64 for golden comparisons, and the location of ../shared."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# Modules whose tests share one expensive module-scoped fixture or cache (an experiment's smoke
# run, a reference training run, the real-width FCN-8s weights of f32 / f64 twin files). Under
# pytest-xdist each runs on one worker, so that it is built once, not once per worker that gets
# one of its tests; every other test is scheduled on its own.
ONE_WORKER = (
    "tests/experiments/test_train_segmentation.py",
    "tests/experiments/test_train_upsample.py",
    "tests/nn/test_fcn_golden.py",
    "tests/train/test_train_distributed.py",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        """Larger units first (``--loadscope-reorder``), then single tests in order."""

        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER else nodeid

    return Scheduling(config, log)
