"""The scripts in examples/ run, at their smallest sizes, and what they draw is what they say.

Each script is loaded as a module and its ``main`` called with tiny settings in a temporary
folder: the pictures must be written, and the numbers behind them must show the effect each
picture is about (capacity falling with the load, the β sweep going from the average of the
memories to one memory, the energy flat where a neuron is dead and the residual energy not).
"""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def _load(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / name))


def _is_picture(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 5_000


def test_every_example_is_tested():
    tested = {"basins.py", "capacity.py", "dead_neurons_figure1.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.fixture(scope="module")
def capacity(tmp_path_factory):
    out = tmp_path_factory.mktemp("capacity")
    return out, _load("capacity.py")["main"](["--tiny", "--out", str(out)])


@pytest.mark.slow
def test_capacity_writes_its_three_pictures(capacity):
    out, _ = capacity
    for name in ("capacity_random.png", "capacity_images.png", "modern_hopfield_beta.png"):
        assert _is_picture(out / name), f"{name} missing or empty"


@pytest.mark.slow
def test_capacity_falls_with_the_number_of_patterns(capacity):
    _, res = capacity
    for kind in ("hebbian", "poly"):
        for n, curve in res["random"][kind].items():
            k, fixed = np.asarray(curve["K"]), np.asarray(curve["fixed"])
            assert np.all(np.diff(k) > 0) and np.all((0 <= fixed) & (fixed <= 1))
            # a light load stores every pattern exactly; past the capacity most are lost
            assert fixed[0] == 1.0 and fixed[-1] < 0.5, (kind, n, k, fixed)
            assert np.all(np.diff(fixed) <= 0), (kind, n, k, fixed)
    for n, curve in res["random"]["exp"].items():
        # the exponential memory holds more patterns than neurons and restores them from 10 %
        # flipped bits; more corruption undoes it less often
        rec = curve["recovered"]
        assert curve["K"] > n and curve["flipped"][0] == 0.1 and rec[0] >= 0.9, curve
        assert rec[-1] <= rec[0], curve
    images = res["images"]
    for kind in ("hebbian", "poly", "exp"):
        assert len(images[kind]) == len(images["K"])
        assert all(0 <= f <= 1 for f in images[kind])


@pytest.mark.slow
def test_the_beta_sweep_goes_from_the_average_to_one_memory(capacity):
    _, res = capacity
    neff = np.asarray(res["beta_sweep"]["effective_patterns"])  # (betas, queries)
    assert np.all(np.diff(res["beta_sweep"]["betas"]) > 0)
    assert np.all(np.diff(neff, axis=0) < 0), neff  # sharper with every β
    assert np.all(neff[0] > 15) and np.all(neff[-1] < 1.5), neff  # 20 stored digits


def test_dead_neurons_figure(tmp_path):
    res = _load("dead_neurons_figure1.py")["main"](str(tmp_path / "fig.png"), grid=41)
    assert _is_picture(Path(res["out"]))
    report = res["report"]
    assert report.stable is True and report.n_dead == {"x": 1}
    x0, x1 = res["grid"]
    e, r = res["energy"], res["residual_energy"]
    dead = x0[0] < 0  # columns where neuron 0 is dead
    # the Krotov–Hopfield energy does not depend on x₀ where neuron 0 is dead ...
    np.testing.assert_allclose(e[:, dead], e[:, dead][:, :1].repeat(dead.sum(), 1), atol=1e-5)
    # ... while the residual energy does, and is lowest next to the steady state (−1, 2)
    assert np.min(np.ptp(r[:, dead], axis=1)) > 1e-3
    i, j = np.unravel_index(np.argmin(r), r.shape)
    assert abs(x0[i, j] + 1) <= 0.2 + 1e-6 and abs(x1[i, j] - 2) <= 0.2 + 1e-6


@pytest.mark.slow
def test_basins_draws_the_curves_and_they_shrink_with_the_load(tmp_path):
    res = _load("basins.py")["main"](["--tiny", "--out", str(tmp_path)])
    assert _is_picture(tmp_path / "basins.png")
    low, high = res["curves"][("hebbian", 0.05)], res["curves"][("hebbian", 0.3)]
    assert low.mean_radius > high.mean_radius
    assert np.all(low.mean[:2] == 1.0) and low.mean[-1] == 0.0  # 60 % flipped: the mirror
