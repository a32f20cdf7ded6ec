"""Test configuration: float64 for golden comparisons, the location of ../shared, and one XLA
compilation cache for the whole run."""

import os
import tempfile

# One persistent XLA compilation cache shared by the pytest workers and the experiments'
# subprocess runs (smoke, kill-and-resume and notebook runs compile many of the same programs).
# Set before jax is imported so that subprocesses inherit it; a caller's own setting wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"ppac-jax-tests-xla-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# XLA's LLVM optimisation level 0: compiling, not running, is most of nearly every test's time
# (about a third less suite time); the few tests whose programs run long opt back in per jit
# (tests.golden.OPTIMIZED). A caller's own level wins here; experiment and notebook runs in a
# subprocess set theirs (tests/subprocess_runs.py).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

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
