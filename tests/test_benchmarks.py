"""The benchmark suite runs on a tiny configuration and writes valid results (no timing is
asserted: times depend on the machine)."""

import json
import math

import numpy as np
import pytest

benchmarks = pytest.importorskip("benchmarks.__main__")
from benchmarks import common as C  # noqa: E402


@pytest.mark.slow
def test_tiny_suite_writes_valid_json_and_markdown(tmp_path):
    rc = benchmarks.main(["--tiny", "--only", "dynamics", "--out", str(tmp_path),
                          "--repeats", "2"])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert {"tier", "machine", "command", "sections", "started", "finished"} <= set(res)
    assert res["tier"] == "tiny"
    assert res["machine"]["devices"] and res["machine"]["backend"]
    sec = res["sections"]["dynamics"]
    assert {"tables", "data", "notes", "plots", "seconds"} <= set(sec)
    assert "error" not in sec
    for label, d in sec["data"].items():
        t = d["times"]
        assert {"hamjax.relax", "hamjax field", "hand-written"} <= set(t), label
        for v in t.values():
            assert v["median_s"] > 0 and len(v["samples_s"]) == 2
            assert v["compile_s"] > 0
        assert math.isfinite(d["ratio_relax_vs_hand"]["median"])
    for p in sec["plots"]:
        assert (tmp_path / p).stat().st_size > 0
    md = (tmp_path / "results.md").read_text()
    assert "## dynamics" in md and "relax / hand" in md


def test_ratio_is_paired_median():
    times = {"a": {"samples_s": [2.0, 4.0, 6.0]}, "b": {"samples_s": [1.0, 2.0, 2.0]}}
    r = C.ratio(times, "a", "b")
    assert r["median"] == 2.0 and r["q25"] <= r["median"] <= r["q75"]


def test_cli_bench_dispatches_to_the_runner(monkeypatch):
    from hamjax import cli

    seen = {}

    def fake(argv, prog):
        seen.update(argv=argv, prog=prog)
        return 0

    monkeypatch.setattr(benchmarks, "main", fake)
    assert cli.main(["bench", "--tiny", "--only", "scaling", "--out", "x"]) == 0
    assert seen == {"argv": ["--tiny", "--only", "scaling", "--out", "x"], "prog": "hamjax bench"}
    # without --out: a new folder of the current directory, not the source tree's results
    assert cli.main(["bench", "--tiny"]) == 0
    assert seen["argv"][:2] == ["--tiny", "--out"]
    assert seen["argv"][2].startswith("hamjax-bench-") and "/" not in seen["argv"][2]


@pytest.mark.slow
def test_tiny_steady_state_section_measures_every_method(tmp_path):
    rc = benchmarks.main(["--tiny", "--only", "steady_state", "--out", str(tmp_path),
                          "--repeats", "2"])
    assert rc == 0
    sec = json.loads((tmp_path / "results.json").read_text())["sections"]["steady_state"]
    assert "error" not in sec
    steps = sec["data"]["train_steps"]["initial"]
    assert {"BPTT 40 steps", "implicit", "eqprop"} <= set(steps["ratios"])
    for r in steps["ratios"].values():
        assert math.isfinite(r["median"]) and r["median"] > 0
    assert steps["metrics"]["implicit"]["used"] == 1.0
    # the hand-written DEQ step computes the same loss as Implicit()'s, and is timed beside it
    hand = steps["metrics"]["hand-written DEQ"]["loss"]
    assert hand == pytest.approx(steps["metrics"]["implicit"]["loss"], rel=1e-3)
    assert math.isfinite(steps["implicit_over_hand_deq"]["median"])
    fwd = sec["data"]["forward"]["initial"]["runs"]
    assert all(r["all_converged"] for r in fwd.values())
    adj = sec["data"]["adjoint"]["initial"]["runs"]
    assert adj["Neumann (default)"]["relative_difference"] < 1e-3


@pytest.mark.slow
def test_hand_written_deq_gradient_is_the_implicit_gradient():
    """The benchmark's hand-written DEQ (closed-form fixed point, custom_vjp Neumann adjoint)
    differentiates the same loss as ``hj.train.Implicit()``: at tight tolerances the two
    gradients agree to 1e-3, so timing one against the other compares equal work."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import hamjax as hj
    from benchmarks import models as M

    d = hj.data.load_digits()
    net = hj.models.dense_classifier((64,), 10, hidden=32, key=jax.random.PRNGKey(0))
    task = hj.train.Classification(num_classes=10, loss_kind="nll")
    b = {k: jnp.asarray(v) for k, v in task.prepare(d.x_train[:16].reshape(16, 64),
                                                    d.y_train[:16], np.random.default_rng(0),
                                                    train=False).items()}
    lh, gh = jax.value_and_grad(M.hand_deq_loss(atol=1e-6, rtol=1e-6))(
        M.softmax_classifier_params(net), b["input"], b["target"])
    tight = hj.RelaxOptions(solver=hj.solvers.FixedPoint(), stop=hj.SteadyState(atol=1e-6),
                            max_steps=1024)
    li, g, _ = hj.train.Implicit(tight).loss_and_grad(net, task, b)
    gi = (g.synapses["w1"].weight, g.layers["hidden"].bias, g.synapses["w2"].weight,
          g.layers["label"].bias)
    assert float(lh) == pytest.approx(float(li), rel=1e-5)
    for a, c in zip(gh[:4], gi, strict=True):
        assert float(jnp.linalg.norm(a - c) / jnp.linalg.norm(c)) < 1e-3


@pytest.mark.slow
def test_memories_section_measures_every_baseline_on_every_corruption(tmp_path):
    """``--only memories``: every dataset present × corruption × method has a PSNR, and the
    settings reported are those the validation split chose."""
    rc = benchmarks.main(["--tiny", "--only", "memories", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "results.json").read_text())["sections"]["memories"]
    from benchmarks import memories

    assert res["data"], res.get("notes")
    for name, d in res["data"].items():
        assert set(d["corruptions"]) == set(memories.CORRUPTIONS), name
        assert (tmp_path / f"memories-{name}.png").is_file()
        for kind, c in d["corruptions"].items():
            assert set(c["psnr"]) == set(memories.METHODS)
            assert all(np.isfinite(v) for v in c["psnr"].values()), (name, kind)
            val = c["validation"]
            assert 0 <= c["ham_converged"] <= 1 and c["ham_train_seconds"] > 0
            best = max((m for m in memories.BASELINES if m != "corrupted input"),
                       key=c["psnr"].get)
            assert c["ham_margin_db"] == pytest.approx(c["psnr"]["HAM"] - c["psnr"][best])
            assert c["pca_k"] == int(max(val["pca"], key=val["pca"].get))
            assert c["hopfield_beta"] == float(max(val["hopfield"], key=val["hopfield"].get))
    # a second run into the same folder goes on from the kept cells instead of recomputing
    # them; a cell kept under another setting is computed again
    cells_path = tmp_path / memories.CELLS
    cells = json.loads(cells_path.read_text())
    first, *rest = sorted(cells)
    cells[first]["record"]["psnr"]["HAM"] = 99.0
    cells[rest[0]]["setting"]["tier"] = "another"
    cells_path.write_text(json.dumps(cells))
    assert benchmarks.main(["--tiny", "--only", "memories", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())["sections"]["memories"]["data"]
    name, kind = first.split("/", 1)
    assert again[name]["corruptions"][kind]["psnr"]["HAM"] == 99.0
    name, kind = rest[0].split("/", 1)
    redone, before = (dict(d[name]["corruptions"][kind]) for d in (again, res["data"]))
    assert redone.pop("ham_train_seconds") > 0 and before.pop("ham_train_seconds") > 0
    assert redone == before  # computed again, the same (seeded) result
    assert json.loads(cells_path.read_text())[rest[0]]["setting"]["tier"] == "tiny"
