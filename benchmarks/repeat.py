"""Whole-suite repeats: ``python -m benchmarks ... --repeat N``.

A shared machine drifts between minutes, not only between samples: one run's interquartile range
understates how far a re-run lands. So the selection runs N times, each in a fresh process (fresh
compilation caches, thread pools and allocator), into ``OUT/repeats/<i>/``, and the combined
results in ``OUT`` give every figure as the median of the N runs' values with their range
``[min, max]``. A target is met only when the whole range meets it
(:func:`benchmarks.common.target_met`). Tables and plots in ``OUT`` are those of run 1; each run's
own ``results.json`` stays in its folder.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from . import common as C

ROOT = Path(__file__).resolve().parent.parent


def _without(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


def run_repeated(n: int, argv: Sequence[str], out: Path) -> dict:
    """Run ``python -m benchmarks argv`` (without ``--repeat`` and ``--out``) ``n`` times in
    fresh processes, combine, write ``out/results.{json,md}`` and return the combined dict.

    The runs are written to ``out/.repeats-staging/`` and moved to ``out/repeats/`` only when all
    have finished, so an interrupted or failed repeat leaves the earlier results as they were.
    Raises ``RuntimeError`` when a run exits without writing its results (a crashed process);
    a section that failed inside a run is recorded by that run and carried into the combination.
    """
    out = Path(out)
    inner = _without(_without(argv, "--repeat"), "--out")
    # the runs go to a staging folder: an interrupted repeat leaves the earlier results whole
    staging = out / ".repeats-staging"
    if staging.exists():
        shutil.rmtree(staging)
    runs = []
    for i in range(1, n + 1):
        folder = staging / str(i)
        cmd = [sys.executable, "-m", "benchmarks", *inner, "--out", str(folder)]
        print(f"[benchmarks] run {i} of {n}: {shlex.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        path = folder / "results.json"
        if not path.exists():
            raise RuntimeError(f"run {i} of {n} wrote no results (exit status {proc.returncode}); "
                               f"the earlier results in {out} are unchanged")
        runs.append(json.loads(path.read_text()))
        # the plots and section files of later runs duplicate run 1's: keep the numbers only
        if i > 1:
            for p in folder.iterdir():
                if p.is_file() and p.name not in ("results.json", "results.md"):
                    p.unlink()
    combined = combine(runs, "python -m benchmarks " + shlex.join(argv))
    combined["repeat_folders"] = [f"repeats/{i}" for i in range(1, n + 1)]
    if (out / "repeats").exists():
        shutil.rmtree(out / "repeats")
    os.replace(staging, out / "repeats")
    for p in (out / "repeats" / "1").iterdir():
        if p.is_file() and p.name not in ("results.json", "results.md"):
            shutil.copy2(p, out / p.name)
    jpath, _ = C.write_results(combined, out)
    print(f"[benchmarks] combined {n} runs into {jpath}")
    return combined


def combine(runs: Sequence[dict], command: str) -> dict:
    """One results dict from several runs of the same selection: run 1's tables, notes and
    plots; every figure the median of the runs' values, ``lo``/``hi`` their range, ``runs`` the
    values themselves. A figure missing from a run (its section failed there) is combined over
    the runs that have it, and the count says so."""
    if not runs:
        raise ValueError("combine needs at least one run")
    out = copy.deepcopy(runs[0])
    n = len(runs)
    out.update(command=command, repeats=n, started=runs[0]["started"],
               finished=runs[-1].get("finished"))
    for name, sec in out["sections"].items():
        secs = [r["sections"].get(name, {}) for r in runs]
        sec["seconds_per_run"] = [s.get("seconds") for s in secs]
        errors = [f"run {i + 1}: {s['error']}" for i, s in enumerate(secs) if "error" in s]
        if errors:
            sec["error"] = "; ".join(errors)
        figs = {}
        for key, f in sec.get("figures", {}).items():
            vals = [s["figures"][key]["value"] for s in secs if key in s.get("figures", {})]
            spread = f"range over {len(vals)} runs" + ("" if len(vals) == n else f" of {n}")
            figs[key] = {**f, "value": statistics.median(vals), "lo": min(vals),
                         "hi": max(vals), "spread": spread, "runs": vals}
        sec["figures"] = figs
        sec["notes"] = [f"figures: median of {n} runs in fresh processes, [range]; tables and "
                        "plots: run 1"] + list(sec.get("notes", []))
    return out
