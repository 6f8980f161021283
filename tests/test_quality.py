"""The quality section: each quoted training result is one ``hamjax train`` command run in a fresh
process, recorded as a result file that the README's tables are generated from."""

import json
import math
import os
from pathlib import Path

import pytest

benchmarks = pytest.importorskip("benchmarks.__main__")
from benchmarks import quality as Q  # noqa: E402

BAD = Q.Spec("bad-flag", "a run the CLI refuses", "an unknown flag", ("--no-such-flag",))

SCHEMA = {  # key -> accepted types of a finished run's record
    "name": str, "title": str, "description": str, "anchor": str, "command": str, "argv": list,
    "tier": str,
    "seed": int, "epochs": int, "task": str, "dataset": str, "model": str, "gradient": str,
    "started": str, "wall_s": float, "train_seconds": float, "returncode": int,
    "metrics": dict, "headline": dict, "converged": float, "loadavg": list, "machine": dict,
    "git_commit": (str, type(None)), "git_dirty": (bool, type(None)), "status": str,
    "error": type(None), "stderr_tail": type(None), "stdout_tail": str, "other_seeds": list,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny tier through ``python -m benchmarks``, with a refused command run first: the
    real run after it must still happen."""
    out = tmp_path_factory.mktemp("quality")
    real = Q.specs
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Q, "specs", lambda tier, data_dir: [BAD, *real(tier, data_dir)])
        rc = benchmarks.main(["--tiny", "--only", "quality", "--out", str(out)])
    return rc, out


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_tiny_tier_writes_a_complete_record(tiny):
    _, out = tiny
    (spec,) = Q.specs("tiny", None)
    rec = _read(out / f"{spec.name}.json")
    for key, types in SCHEMA.items():
        assert key in rec, key
        assert isinstance(rec[key], types), (key, rec[key])
    assert rec["status"] == "ok" and rec["returncode"] == 0 and rec["tier"] == "tiny"
    assert rec["command"] == "hamjax train " + " ".join(spec.args)
    assert rec["argv"] == ["hamjax", "train", *spec.args]
    # the record's identity is what the CLI ran, and what the CLI's parser says it runs
    run = out / "runs" / spec.name
    assert sorted(p.name for p in run.iterdir()) == sorted(Q.RUN_FILES)
    cfg = _read(run / "config.json")
    parsed = Q.parse(spec.args)
    for key in ("seed", "epochs", "task", "dataset", "model", "gradient"):
        assert rec[key] == cfg[key] == parsed[key], key
    # the headline is the copied metrics.json's figure, and the whole command outlasts training
    metrics = _read(run / "metrics.json")
    assert rec["metrics"] == metrics
    assert rec["headline"] == {"name": "test_accuracy", "value": metrics["test_accuracy"]}
    assert 0.0 <= rec["headline"]["value"] <= 1.0
    assert rec["converged"] == metrics["test_converged"]
    assert rec["train_seconds"] == metrics["train_seconds"] > 0
    assert rec["wall_s"] >= rec["train_seconds"]
    assert len(rec["loadavg"]) == 2 and all(v >= 0 for v in rec["loadavg"])
    assert rec["machine"]["backend"] and rec["machine"]["versions"]["jax"]
    # the further seeds ran the same command with --seed
    (other,) = rec["other_seeds"]
    assert other["seed"] == 1 and other["status"] == "ok" and 0.0 <= other["value"] <= 1.0
    assert other["wall_s"] > 0 and 0.0 <= other["converged"] <= 1.0
    # nothing left behind by the staging
    assert not [p for p in out.rglob(".*")]


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_others_go_on(tiny):
    rc, out = tiny
    assert rc == 1  # the suite's exit status says a run failed
    bad = _read(out / "bad-flag.json")
    assert bad["status"] == "failed" and bad["returncode"] == 2
    assert bad["error"] == "exit status 2"
    assert "--no-such-flag" in bad["stderr_tail"]
    assert bad["headline"]["value"] is None and bad["metrics"] == {}
    assert bad["train_seconds"] is None and bad["converged"] is None
    sec = _read(out / "results.json")["sections"]["quality"]
    assert sec["error"] == "runs failed: bad-flag"
    (table,) = sec["tables"]
    rows = {r[0]: r for r in table["rows"]}
    assert rows[BAD.title][2].startswith("failed")
    (spec,) = Q.specs("tiny", None)
    assert rows[spec.title][2].startswith("accuracy ")
    assert sec["data"][spec.name]["status"] == "ok"
    assert any("tier tiny" in n for n in sec["notes"])


def test_every_tier_parses_and_names_what_it_runs(tmp_path):
    """Every command of every tier is accepted by ``hamjax train``'s parser (the full tier's
    MNIST and Fashion-MNIST runs too, without running them), and each slug starts with the
    run's dataset, model (or task) and estimator. The full tier trains on the complete sets
    (no --limit-train but for the equal-budget EqProp check) and at the steady state."""
    data_dir = tmp_path / "data" / "mnist"
    fashion = tmp_path / "data" / "fashion-mnist"
    fashion.mkdir(parents=True)
    (fashion / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    full = Q.specs("full", data_dir)
    quick = Q.specs("quick", data_dir)
    tiny = Q.specs("tiny", None)
    assert Q.specs("full", None) == quick  # without MNIST: the digits runs only
    assert quick == full[: len(quick)] and len(full) > len(quick)
    assert [s.name for s in full] == [s.name for s in Q.every_spec()]
    names = [s.name for s in full + tiny]
    assert len(set(names)) == len(names)
    assert all(s.name.startswith("tiny-") for s in tiny)  # never overwrites a quick record
    for s in full + tiny:
        cfg = Q.parse(s.args)
        middle = cfg["model"] if cfg["task"] == "classify" else cfg["task"]
        tail = cfg["gradient"] if cfg["task"] == "classify" else cfg["model"]
        assert s.name.removeprefix("tiny-").startswith(
            f"{cfg['dataset']}-{middle}-{tail}"), s.name
        assert s.title and s.description
    assert Q.command(quick[0]) == "hamjax train"  # the quickstart's command has no flags
    assert Q.parse(())["gradient"] == "implicit"  # and it trains at the steady state
    big = {s.name: Q.parse(s.args) for s in full[len(quick):]}
    for name, c in big.items():
        if name.endswith("-1epoch"):
            assert c["limit_train"] == 10240 and c["hidden"] == [2048]
            continue
        assert c["limit_train"] is None and c["limit_test"] is None, name
        assert c["gradient"] in ("implicit", "eqprop") or c["model"] == "transformer", name
    assert {"mnist-dense-implicit", "mnist-dense-eqprop", "mnist-conv-implicit",
            "fashion-mnist-dense-implicit", "fashion-mnist-conv-implicit"} <= set(big)
    for name in ("mnist-dense-implicit", "mnist-conv-implicit", "fashion-mnist-dense-implicit",
                 "fashion-mnist-conv-implicit", "mnist-dense-eqprop"):
        assert next(s for s in full if s.name == name).anchor  # a published number beside it
    dense = big["mnist-dense-implicit"]
    assert big["mnist-dense-eqprop"] == {**dense, "gradient": "eqprop"}
    pair = big["mnist-dense-implicit-h2048-1epoch"]
    assert big["mnist-dense-eqprop-h2048-1epoch"] == {**pair, "gradient": "eqprop"}
    et = big["mnist-complete-transformer"]
    assert (et["model"], et["task"], et["gradient"], et["noise"]) == (
        "transformer", "complete", "bptt", 0.5)
    assert all(c["data_dir"] == str(data_dir.resolve()) for n, c in big.items()
               if n.startswith("mnist"))
    assert all(c["data_dir"] == str(fashion.resolve()) and c["flip"] for n, c in big.items()
               if n.startswith("fashion"))
    # the command shows the data folder relative to the repository root
    shown = Q.command(full[len(quick)])
    assert f"--data-dir {os.path.relpath(data_dir, Q.ROOT)}" in shown


def test_parse_reports_what_the_cli_refuses():
    with pytest.raises(ValueError, match="--no-such-flag"):
        Q.parse(["--no-such-flag"])
    with pytest.raises(ValueError, match="needs --model memory or dense"):
        Q.parse(["--task", "denoise", "--model", "conv"])


def test_headline_per_task():
    m = {"test_psnr": 14.9, "test_psnr_input": 13.3, "test_mse": 0.03}
    assert Q.headline(m, "denoise") == {"name": "test_psnr", "value": 14.9, "baseline": 13.3,
                                        "baseline_name": "test_psnr_input"}
    assert Q.headline({"test_accuracy": 0.97}, "classify") == {"name": "test_accuracy",
                                                               "value": 0.97}
    assert Q.headline({}, "classify")["value"] is None


def _fake_run(value: float):
    """A stand-in for the subprocess that leaves a finished run folder (no training)."""
    def execute(argv, cwd):
        run = Path(argv[argv.index("--out") + 1])
        run.mkdir()
        cfg = Q.parse(argv[argv.index("train") + 1: argv.index("--out")])
        (run / "config.json").write_text(json.dumps(cfg))
        (run / "metrics.json").write_text(json.dumps(
            {"test_accuracy": value, "test_converged": 1.0, "train_seconds": 0.5}))
        (run / "history.csv").write_text(f"epoch,test_accuracy\n1,{value}\n")
        (cwd / "stdout.txt").write_text(f"test accuracy: {value}\nrun folder: {run}\n")
        return 0, 1.0, ""
    return execute


def _snapshot(q: Path) -> dict:
    return {str(p.relative_to(q)): p.read_bytes() for p in sorted(q.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["during the run", "writing the record", "renaming the record"])
def test_an_interrupted_run_leaves_the_previous_record(tmp_path, monkeypatch, where):
    from benchmarks import common as C

    cfg = C.Config.for_tier("tiny", tmp_path)
    (spec,) = Q.specs("tiny", None)
    machine, git = {"backend": "cpu"}, {"commit": None, "dirty": None}
    monkeypatch.setattr(Q, "_execute", _fake_run(0.25))
    first = Q.run_one(spec, cfg, machine, git)
    q = tmp_path
    before = _snapshot(q)
    assert first["headline"]["value"] == 0.25 and len(before) == 1 + len(Q.RUN_FILES)

    if where == "during the run":
        def execute(argv, cwd):
            raise KeyboardInterrupt
        monkeypatch.setattr(Q, "_execute", execute)
    else:
        monkeypatch.setattr(Q, "_execute", _fake_run(0.75))
        if where == "writing the record":
            def serialise(rec):
                raise RuntimeError("disk full")
            monkeypatch.setattr(Q, "_serialise", serialise)
        else:  # the run folder has been swapped in; the record's rename fails
            replace = os.replace

            def failing(src, dst):
                if str(dst).endswith(".json"):
                    raise OSError("rename failed")
                replace(src, dst)
            monkeypatch.setattr(Q.os, "replace", failing)
    with pytest.raises((KeyboardInterrupt, RuntimeError, OSError)):
        Q.run_one(spec, cfg, machine, git)
    assert _snapshot(q) == before  # the record and its files, byte for byte
    assert not [p for p in q.rglob(".*")]  # and no staging left behind

    monkeypatch.undo()
    monkeypatch.setattr(Q, "_execute", _fake_run(0.75))
    Q.run_one(spec, cfg, machine, git)  # a run that finishes replaces the record
    rec = json.loads((q / f"{spec.name}.json").read_text())
    assert rec["headline"]["value"] == 0.75
    copied = json.loads((q / "runs" / spec.name / "metrics.json").read_text())
    assert copied["test_accuracy"] == 0.75 and math.isclose(rec["wall_s"], 1.0)
    assert len(_snapshot(q)) == len(before)


@pytest.mark.slow
def test_the_shown_output_names_no_temporary_folder_and_elides_the_middle(tiny, tmp_path):
    _, out = tiny
    (spec,) = Q.specs("tiny", None)
    rec = _read(out / f"{spec.name}.json")
    assert "test accuracy: " in rec["stdout_tail"] and "/tmp" not in rec["stdout_tail"]
    run = tmp_path / "run"
    text = "".join(f"line {i}\n" for i in range(9)) + f"run folder: {run} (a, b)\n"
    shown = Q.shown_stdout(text, run)
    assert shown == "line 0\nline 1\n...\nline 7\nline 8\nrun folder: runs/... (a, b)\n"
