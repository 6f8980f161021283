"""Shared test configuration: float32 on CPU, small hypothesis budgets."""

import os

import jax
import pytest
from hypothesis import HealthCheck, Phase, settings

jax.config.update("jax_enable_x64", False)
# References are float32 with tight tolerances: no TF32/bf16 matmul passes on accelerators, and
# CPU unless the caller picks a platform (JAX_PLATFORMS=cuda pytest ...).
jax.config.update("jax_default_matmul_precision", "highest")
if "JAX_PLATFORMS" not in os.environ:
    jax.config.update("jax_platforms", "cpu")

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


@pytest.fixture(scope="session")
def key():
    return jax.random.PRNGKey(0)
