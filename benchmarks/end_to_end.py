"""5. End to end: ``hamjax train`` wall time per epoch on digits and on MNIST.

Runs the command-line entry point itself (``hamjax.cli.main``) with its defaults (dense HAM of
1024 hidden neurons, implicit differentiation at the steady state, batch 32) into a temporary run
folder and reads ``history.csv``:
the first epoch includes compilation, the later ones do not.
"""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

from . import common as C

NAME = "end_to_end"


def _train(args: list[str]) -> dict:
    from hamjax import cli

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        cli.main(["train", *args, "--out", str(out), "--no-progress"])
        wall = time.perf_counter() - t0
        with open(out / "history.csv") as f:
            hist = list(csv.DictReader(f))
        import json

        metrics = json.loads((out / "metrics.json").read_text())
    epochs = [float(h["epoch_seconds"]) for h in hist]
    return {"args": args, "wall_s": wall, "epoch_seconds": epochs,
            "first_epoch_s": epochs[0], "later_epoch_s": (sum(epochs[1:]) / len(epochs[1:]))
            if len(epochs) > 1 else None,
            "test_accuracy": metrics.get("test_accuracy")}


def run(cfg: C.Config) -> dict:
    runs = {"digits": ["--epochs", str(cfg.pick(1, 3, 5))]}
    if cfg.tier == "tiny":
        runs["digits"] += ["--limit-train", "256", "--limit-test", "64", "--hidden", "16"]
    notes = []
    d = cfg.data_dir or C.default_data_dir()
    if d is not None and cfg.tier != "tiny":
        runs["mnist"] = ["--dataset", "mnist", "--data-dir", str(d), "--epochs",
                         str(cfg.pick(1, 2, 3))] + (["--limit-train", "10000", "--limit-test",
                                                      "2000"] if cfg.tier == "quick" else [])
    elif d is None:
        notes.append("MNIST not found: pass --data-dir (MNIST run skipped)")
    rows, data = [], {}
    for name, args in runs.items():
        r = _train(args)
        data[name] = r
        rows.append([name, " ".join(a for a in args if not a.startswith("/")),
                     C.fmt_time(r["first_epoch_s"]), C.fmt_time(r["later_epoch_s"]),
                     C.fmt_time(r["wall_s"]),
                     "n/a" if r["test_accuracy"] is None else f"{r['test_accuracy']:.3f}"])
    tab = C.table("`hamjax train` with its defaults (dense HAM, implicit at the steady state, "
                  "batch 32)",
                  ["dataset", "arguments", "epoch 1 (with compile)", "later epochs",
                   "total wall", "test accuracy"], rows)
    figures = {f"{name}: later epoch": C.figure(
        f"`hamjax train` on {name} ({' '.join(a for a in r['args'] if not a.startswith('/'))}),"
        " seconds per epoch after the first", r["later_epoch_s"], unit="s")
        for name, r in data.items() if r["later_epoch_s"] is not None}
    return C.section([tab], data, notes, figures=figures)
