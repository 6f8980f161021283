"""Figures in README.md and docs/ are generated from results files (benchmarks.report), and
whole-suite repeats combine into medians with ranges (benchmarks.repeat)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

report = pytest.importorskip("benchmarks.report")
from benchmarks import common as C  # noqa: E402
from benchmarks import repeat  # noqa: E402
from benchmarks.__main__ import main as bench_main  # noqa: E402

MACHINE = {"backend": "cpu", "devices": ["TFRT_CPU_0"], "device_kind": "cpu", "num_devices": 1,
           "cpu": "Test CPU", "cpu_cores": 2, "python": "3.11", "platform": "linux",
           "versions": {"jax": "0.0.test"}}


def _run(scale: float) -> dict:
    """One fake run of the timing suite: every figure a renderer reads, times ``scale``."""
    r = lambda m: {"median": m * scale, "q25": m * scale * 0.95, "q75": m * scale * 1.05}  # noqa: E731
    dyn = {"dense: relax / hand": C.ratio_figure("relax, 50 Euler steps, dense: hamjax / "
                                                 "hand-written", r(0.9), 1.05),
           "dense: relax / hamux": C.ratio_figure("relax, 50 Euler steps, dense: hamjax / hamux",
                                                  r(1.2), 1.0),
           "dense: field / hand": C.ratio_figure("field loop", r(0.8))}
    tr = {"bptt: hamjax / hand": C.ratio_figure("BPTT gradient, 20 Euler steps, dense: hamjax / "
                                                "hand-written", r(1.0), 1.10),
          "bptt memory at 10 steps": C.figure("bptt mem", 1.0, unit="MiB"),
          "implicit memory at 10 steps": C.figure("implicit mem", 12.9, unit="MiB")}
    ss = {"initial: implicit / BPTT": C.ratio_figure("implicit", r(1.7), 3.0),
          "trained: implicit / BPTT": C.ratio_figure("implicit", r(1.2), 3.0),
          "initial: forward adaptive ODE (Tsit5) evaluations": C.figure("ode", 156),
          "initial: forward fixed point evaluations": C.figure("fp", 26),
          "initial: forward fixed point / ODE": C.ratio_figure("fp / ode", r(0.3)),
          "initial: adjoint Neumann products": C.figure("neumann", 51),
          "initial: adjoint Neumann time": C.figure("neumann time", 2.0 * scale, unit="ms")}
    secs = {"dynamics": C.section(figures=dyn), "training": C.section(figures=tr),
            "steady_state": C.section(figures=ss)}
    return {"tier": "quick", "started": "2026-12-01T00:00:00", "finished": "2026-12-01T00:05:00",
            "machine": MACHINE, "command": "python -m benchmarks --quick", "sections": secs}


@pytest.fixture
def results(tmp_path):
    """A results folder with one machine whose timing results combine three runs."""
    folder = tmp_path / "results" / "test-machine" / "timing"
    C.write_results(repeat.combine([_run(1.0), _run(1.1), _run(0.9)],
                                   "python -m benchmarks --quick --repeat 3"), folder)
    return tmp_path / "results"


def test_combine_takes_the_median_and_range_of_the_runs():
    runs = [_run(1.0), _run(1.2), _run(0.8)]
    out = repeat.combine(runs, "cmd")
    f = out["sections"]["dynamics"]["figures"]["dense: relax / hand"]
    assert f["value"] == pytest.approx(0.9)
    assert (f["lo"], f["hi"]) == (pytest.approx(0.72), pytest.approx(1.08))
    assert f["runs"] == [pytest.approx(0.9), pytest.approx(1.08), pytest.approx(0.72)]
    assert out["repeats"] == 3 and out["command"] == "cmd"
    # the target is judged on the upper end of the range: median 0.9 ≤ 1.05, max 1.08 is not
    assert C.target_met(f) is False
    assert C.target_met({**f, "hi": 1.0}) is True
    # run 1 is left as it was
    assert runs[0]["sections"]["dynamics"]["figures"]["dense: relax / hand"]["value"] == 0.9


def test_combine_counts_runs_that_lack_a_figure():
    runs = [_run(1.0), _run(1.0)]
    del runs[1]["sections"]["dynamics"]["figures"]["dense: relax / hand"]
    runs[1]["sections"]["dynamics"]["error"] = "RuntimeError: boom"
    out = repeat.combine(runs, "cmd")["sections"]["dynamics"]
    assert out["figures"]["dense: relax / hand"]["spread"] == "range over 1 runs of 2"
    assert "run 2: RuntimeError: boom" in out["error"]


def test_higher_is_better_targets_use_the_lower_end():
    f = C.figure("throughput", 0.9, lo=0.7, hi=1.0, target=0.8, better="higher")
    assert C.target_met(f) is False and C.fmt_target(f) == "≥ 0.8"
    with pytest.raises(ValueError, match="better"):
        C.figure("x", 1.0, better="up")


def test_figure_formatting():
    assert C.fmt_figure(C.figure("x", 1.234, lo=1.2, hi=1.3, unit="×")) == "1.23 [1.20–1.30]×"
    assert C.fmt_figure(C.figure("n", 5077)) == "5,077"
    assert C.fmt_figure(C.figure("n", 26.0, lo=26.0, hi=26.0)) == "26"
    assert C.fmt_figure(C.figure("t", 12.93, unit="MiB")) == "12.9 MiB"


def test_without_strips_a_flag_and_its_value():
    argv = ["--quick", "--repeat", "5", "--out", "d", "--only", "dynamics", "--repeat=3"]
    assert repeat._without(repeat._without(argv, "--repeat"), "--out") == [
        "--quick", "--only", "dynamics"]


def test_repeat_must_be_positive(capsys):
    with pytest.raises(SystemExit) as e:
        bench_main(["--tiny", "--repeat", "0"])
    assert e.value.code == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err


def test_blocks_are_rendered_from_the_files_and_checked(results, tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("intro\n<!-- report:speed machine=test-machine -->\nhand-typed 0.5\n"
                   "<!-- /report:speed -->\n\n<!-- report:steady-state machine=test-machine -->\n"
                   "<!-- /report:steady-state -->\nend\n")
    args = ["--results", str(results), str(doc)]
    assert report.main(["--check", *args]) == 1          # stale: differs from the files
    assert report.main(args) == 0
    text = doc.read_text()
    assert "hand-typed" not in text and text.startswith("intro\n") and text.endswith("end\n")
    # medians of the runs 0.9·{1, 1.1, 0.9} with their range, and the verdict on the range
    assert "0.90 [0.81–0.99]×" in text and "1.20 [1.08–1.32]×" in text
    assert "Test CPU" in text and "medians of 3 runs" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| implicit"))
    assert "1.70 [1.53–1.87]×" in row and "1.20 [1.08–1.32]×" in row and "met" in row
    assert report.main(["--check", *args]) == 0          # current now
    # a figure edited by hand is caught
    doc.write_text(text.replace("0.90 [0.81–0.99]×", "0.85 [0.81–0.99]×"))
    assert report.main(["--check", *args]) == 1


def test_unknown_blocks_and_missing_results_are_errors(results, tmp_path, capsys):
    doc = tmp_path / "page.md"
    doc.write_text("<!-- report:speeed machine=test-machine -->\n<!-- /report:speeed -->\n")
    assert report.main(["--results", str(results), str(doc)]) == 2
    assert "unknown report block 'speeed'" in capsys.readouterr().err
    doc.write_text("<!-- report:speed machine=nowhere -->\n<!-- /report:speed -->\n")
    assert report.main(["--results", str(results), str(doc)]) == 2
    assert "does not exist" in capsys.readouterr().err
    doc.write_text("<!-- report:sharding machine=test-machine -->\n<!-- /report:sharding -->\n")
    assert report.main(["--results", str(results), str(doc)]) == 2
    assert "section 'sharding' is not in the results" in capsys.readouterr().err


def test_quality_blocks_come_from_the_run_records(results, tmp_path):
    q = results / "test-machine" / "quality"
    q.mkdir()
    rec = {"name": "digits-dense-implicit", "title": "digits classification",
           "command": "hamjax train", "epochs": 30, "started": "2026-12-01T01:00:00",
           "wall_s": 15.2, "train_seconds": 6.1, "returncode": 0, "converged": 0.624,
           "headline": {"name": "test_accuracy", "value": 0.9721}, "machine": MACHINE,
           "stdout_tail": "test accuracy: 0.9721\n", "loadavg": [1.5, 2.0]}
    (q / "digits-dense-implicit.json").write_text(json.dumps(rec))
    den = {**rec, "name": "mnist-denoise", "title": "MNIST denoising", "epochs": 3,
           "command": "hamjax train --task denoise", "converged": None,
           "headline": {"name": "test_psnr", "value": 14.97, "baseline": 13.33}}
    (q / "mnist-denoise.json").write_text(json.dumps(den))
    doc = tmp_path / "page.md"
    doc.write_text("<!-- report:quality machine=test-machine -->\n<!-- /report:quality -->\n"
                   "<!-- report:quickstart machine=test-machine -->\n<!-- /report:quickstart -->\n")
    assert report.main(["--results", str(results), str(doc)]) == 0
    text = doc.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "`hamjax" in ln]
    assert len(rows) == 2 and "accuracy **0.9721**" in rows[0] and "0.624" in rows[0]
    assert "PSNR **14.97 dB** (corrupted input 13.33 dB)" in rows[1]
    # each row beside its published anchor, from the run list; "—" where there is none
    mnist = {**rec, "name": "mnist-dense-implicit", "title": "MNIST classification, dense"}
    (q / "mnist-dense-implicit.json").write_text(json.dumps(mnist))
    assert report.main(["--results", str(results), str(doc)]) == 0
    rows = [ln for ln in doc.read_text().splitlines()
            if ln.startswith("| ") and "`hamjax" in ln]
    assert "Krotov & Hopfield 2016" in rows[1] and "| — |" in rows[0]
    # beside each row its target from the run list, met or missed by the seed-0 figure
    assert "| ≥ 0.97: met |" in rows[0] and "| ≥ 0.988: missed |" in rows[1]
    assert "```\ntest accuracy: 0.9721\n```" in text and "15 s wall" in text
    assert "load average 1.5–2.0" in text
    # further seeds of the same command beside seed 0's figure, a failed one named
    rec["seed"] = 0
    rec["other_seeds"] = [{"seed": 1, "value": 0.9805, "status": "ok"},
                          {"seed": 2, "value": None, "status": "failed"}]
    (q / "digits-dense-implicit.json").write_text(json.dumps(rec))
    assert report.main(["--results", str(results), str(doc)]) == 0
    assert "accuracy **0.9721** (seed 0; seeds 1, 2: 0.9805, failed)" in doc.read_text()
    # the target is judged by the median of the seeds: 0.9721 of (0.9721, 0.9805, failed)
    assert "≥ 0.97: met (median of 3 seeds)" in doc.read_text()
    rec["other_seeds"][0]["value"] = 0.9600
    (q / "digits-dense-implicit.json").write_text(json.dumps(rec))
    assert report.main(["--results", str(results), str(doc)]) == 0
    assert "≥ 0.97: missed (median of 3 seeds)" in doc.read_text()


def test_readme_and_docs_figures_are_the_committed_results():
    """Every generated block of README.md and docs/ is what the committed results files give:
    a figure edited by hand, or results re-run without regenerating, fail here. Regenerate with
    `python -m benchmarks.report`."""
    assert report.main(["--check"]) == 0


def test_no_page_states_a_hand_typed_measurement():
    """Outside generated blocks, neither the README nor a docs page quotes a figure with a range,
    a ratio, a time or an accuracy (the forms measured figures take)."""
    measured = re.compile(r"\d\.\d+ \[\d|\d\.\d+\s?×|\d\s?(ms|µs|MiB)\b|\d s wall"
                          r"|accuracy \**0\.\d")
    for path in report.documents():
        outside = report.BLOCK.sub("", path.read_text())
        found = [m.group(0) for m in measured.finditer(outside)]
        assert not found, f"{path.name}: hand-typed figures {found}"


def test_compare_says_which_re_run_figures_fall_within_the_stated_range(results, tmp_path,
                                                                        capsys):
    fresh = tmp_path / "fresh"
    C.write_results(repeat.combine([_run(1.0), _run(1.3)], "re-run"), fresh)
    stated = report.timing(results / "test-machine")
    rows = {r["key"]: r for r in report.compare(stated, report._read(fresh / "results.json"))}
    # stated: 0.9 × [0.9, 1.1]; the re-run's median 0.9 × 1.15 = 1.035 lies above 0.99
    assert rows["dense: relax / hand"]["within"] is False
    # counts do not scale with the run: the same everywhere
    assert rows["initial: forward fixed point evaluations"]["within"] is True
    assert report.main(["--results", str(results), "--machine", "test-machine",
                        "--compare", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert f"of {len(rows)} re-run figures lie within the stated range" in out


def _fake_suite(scales, fail_at=None):
    """A stand-in for ``python -m benchmarks``: run i writes ``_run(scales[i])`` to its --out."""
    calls = []

    def fake(cmd, cwd):
        calls.append(cmd)
        if len(calls) != fail_at:
            C.write_results(_run(scales[len(calls) - 1]), Path(cmd[cmd.index("--out") + 1]))
        return subprocess.CompletedProcess(cmd, 0 if len(calls) != fail_at else 1)

    return fake, calls


def test_repeated_runs_are_combined_and_a_failed_repeat_keeps_the_earlier_results(
        tmp_path, monkeypatch):
    out = tmp_path / "timing"
    fake, calls = _fake_suite([1.0, 1.1, 0.9])
    monkeypatch.setattr(repeat.subprocess, "run", fake)
    res = repeat.run_repeated(3, ["--quick", "--repeat", "3", "--out", str(out)], out)
    assert len(calls) == 3 and all("--repeat" not in c for c in calls)
    assert [c[c.index("--out") + 1] for c in calls] == [
        str(out / ".repeats-staging" / str(i)) for i in (1, 2, 3)]
    f = res["sections"]["dynamics"]["figures"]["dense: relax / hand"]
    assert (f["value"], f["lo"], f["hi"]) == pytest.approx((0.9, 0.81, 0.99))
    assert json.loads((out / "results.json").read_text())["repeats"] == 3
    assert sorted(p.name for p in (out / "repeats").iterdir()) == ["1", "2", "3"]
    assert not (out / ".repeats-staging").exists()
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    fake, calls = _fake_suite([2.0, 2.0, 2.0], fail_at=2)
    monkeypatch.setattr(repeat.subprocess, "run", fake)
    with pytest.raises(RuntimeError, match="run 2 of 3 wrote no results"):
        repeat.run_repeated(3, ["--quick"], out)
    after = {p: p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and ".repeats-staging" not in p.parts}
    assert after == before
