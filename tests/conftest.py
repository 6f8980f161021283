"""Shared test configuration: float32 on CPU, quick compilation, small hypothesis budgets."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import pytest
from hypothesis import HealthCheck, Phase, settings

jax.config.update("jax_enable_x64", False)
# References are float32 with tight tolerances: no TF32/bf16 matmul passes on accelerators, and
# CPU unless the caller picks a platform (JAX_PLATFORMS=cuda pytest ...).
jax.config.update("jax_default_matmul_precision", "highest")
if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")


def _xla_accepts(flag: str) -> bool:
    """Whether this jaxlib's XLA knows ``flag``: it aborts the process on an unknown one, so a
    throwaway process starts a CPU client with it."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "from jaxlib import xla_client; xla_client.make_cpu_client()"],
            env=dict(os.environ, XLA_FLAGS=flag), capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


if os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
    # The tests' programs are small and run a few times each: compiling them is most of the
    # suite's time, and most of a CPU compilation goes to LLVM optimising the generated code
    # and to the MLIR fusion emitters, neither of which pays at these sizes (no fast-math
    # either way; results may differ from a default build in the last bits, as between XLA
    # versions). XLA reads the flags when the backend starts, at the first computation, after
    # this file; subprocesses started by the tests inherit them.
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" not in _flags:
        _flags += " --xla_backend_optimization_level=0"
    if "xla_cpu_use_fusion_emitters" not in _flags and _xla_accepts(
            "--xla_cpu_use_fusion_emitters=false"):
        _flags += " --xla_cpu_use_fusion_emitters=false"
    os.environ["XLA_FLAGS"] = _flags.strip()

# hamjax's commands keep their compiled programs on disk (cli/_main.py): in the tests, in a
# folder of this run's own, shared by the processes the tests start, never the user's cache
if "HAMJAX_COMPILATION_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="hamjax-tests-jax-cache-")
    os.environ["HAMJAX_COMPILATION_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# Tests compile small JAX programs per drawn shape: keep example counts low, never time out on
# the first (compiling) example, and draw the same examples on every run. No shrinking: every
# shrink step compiles again (minutes on a shared CPU); the failing example is still printed.
settings.register_profile(
    "hamjax",
    max_examples=10,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("hamjax")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true",
                     help="run the slow tier too: the tests marked slow or multiprocess (whole "
                          "command-line runs, several processes, MNIST-sized gradients)")


def pytest_collection_modifyitems(config, items):
    """The slow tier (``slow``; ``multiprocess`` belongs to it) runs with ``--slow`` only:
    ``pytest -q`` is the quick suite, ``pytest -q --slow`` the whole one, ``pytest -q --slow -m
    slow`` the slow tier alone (CI runs both tiers)."""
    for item in items:
        if item.get_closest_marker("multiprocess"):
            item.add_marker(pytest.mark.slow)
    if config.getoption("--slow"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module. Each CPU executable keeps memory
    mappings of its own (about a hundred per CLI run); the whole suite in one process would
    otherwise pass Linux's 65 530 mappings a process may hold (vm.max_map_count), where the
    next compilation dies of a segmentation fault inside XLA. Modules share few programs, so
    little is compiled twice."""
    yield
    jax.clear_caches()
