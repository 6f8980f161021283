"""``python -m benchmarks.report [--check]``: the figures of README.md and docs/ from results files.

A figure typed by hand drifts from the run it came from. So every measured number that README.md
or a page of ``docs/`` states sits in a generated block::

    <!-- report:NAME [machine=SLUG] -->
    ...generated: never edit by hand...
    <!-- /report:NAME -->

and this script rewrites each block from the committed results of ``benchmarks/results/SLUG/``
(``timing/results.json`` from ``python -m benchmarks --repeat N``, ``quality/*.json`` from
``python -m benchmarks --only quality``). ``--check`` rewrites nothing and exits 1 when a block
differs from what the files give (``tests/test_report.py`` runs it). Every block opens with the
machine, date, versions and command its numbers come from.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import common as C
from . import quality as Q

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_MACHINE = "cpu-2core-amd-epyc"

BLOCK = re.compile(r"<!-- report:(?P<name>[\w-]+)(?P<args>(?: [\w-]+=\S+)*) -->\n"
                   r"(?P<body>.*?)<!-- /report:(?P=name) -->", re.S)


class ReportError(Exception):
    """A block names a renderer, machine or figure that the committed results do not have."""


# ------------------------------------------------------------------------------ reading results
def timing(folder: Path) -> dict[str, Any]:
    """``<folder>/timing/results.json`` (``folder``: one machine's results)."""
    return _read(folder / "timing" / "results.json")


def quality(folder: Path) -> list[dict[str, Any]]:
    """The run records of ``<folder>/quality/``, in the order of ``ORDER`` (then by name)."""
    folder = folder / "quality"
    recs = [_read(p) for p in sorted(folder.glob("*.json")) if p.name != "results.json"]
    if not recs:
        raise ReportError(f"no quality records in {_rel(folder)}: run "
                          f"`python -m benchmarks --only quality --out {_rel(folder)}`")
    return sorted(recs, key=lambda r: (ORDER.index(r["name"]) if r["name"] in ORDER
                                       else len(ORDER), r["name"]))


# the rows in the order the quality section runs them (digits, MNIST, Fashion-MNIST)
ORDER = tuple(spec.name for spec in Q.every_spec())
DEFAULT_RUN = Q.specs("quick", None)[0].name  # `hamjax train` with no flags


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ReportError(f"{_rel(path)} does not exist")
    return json.loads(path.read_text())


def _rel(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def figures(res: Mapping[str, Any], section: str) -> dict[str, dict[str, Any]]:
    sec = res["sections"].get(section)
    if sec is None:
        raise ReportError(f"section {section!r} is not in the results of `{res['command']}`")
    return sec.get("figures", {})


def _figure(figs: Mapping[str, Any], key: str, section: str) -> dict[str, Any]:
    if key not in figs:
        raise ReportError(f"figure {key!r} missing from section {section!r}")
    return figs[key]


# ------------------------------------------------------------------------------ provenance
def provenance(res: Mapping[str, Any], path: str) -> str:
    """One line: where the block's numbers come from."""
    m = res["machine"]
    n = res.get("repeats")
    spread = (f"medians of {n} runs in fresh processes, [range]" if n
              else "one run: medians of paired samples, [interquartile range]")
    return (f"_Generated from `{path}` ({_machine(m)}; {res['started'][:10]}; "
            f"`{res['command']}`): {spread}._")


def _machine(m: Mapping[str, Any]) -> str:
    dev = (f"{m['cpu_cores']}-core {m['cpu']}" if m["backend"] == "cpu"
           else f"{m['num_devices']}× {m['device_kind']}")
    return f"{m['backend']}, {dev}, jax {m['versions']['jax']}"


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    return (["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _cells(fig: Mapping[str, Any] | None) -> list[str]:
    """``value [range]``, target, verdict."""
    if fig is None:
        return ["n/a", "", ""]
    return [C.fmt_figure(fig), C.fmt_target(fig), C.fmt_met(fig)]


def _timing_path(folder: Path) -> str:
    return _rel(folder / "timing" / "results.json")


# ------------------------------------------------------------------------------ renderers
def speed(folder: Path) -> list[str]:
    """Relaxation and BPTT cost against the hand-written loop and hamux."""
    res = timing(folder)
    dyn, tr = figures(res, "dynamics"), figures(res, "training")
    rows = []
    for figs in (dyn, tr):
        for key, f in figs.items():
            if key.endswith("/ hand") and not key.endswith("field / hand"):
                hamux = figs.get(key.replace("/ hand", "/ hamux"))
                rows.append([f["label"].split(":")[0], *_cells(f), *_cells(hamux)])
    if not rows:
        raise ReportError(f"no hamjax / hand-written figures in `{res['command']}`")
    head = [provenance(res, _timing_path(folder)), ""]
    if all(r[4] == "n/a" for r in rows):  # hamux was not installed where this ran
        return head + ["hamux was not installed on this machine: no hamux columns.", ""] + _table(
            ["measurement", "hamjax / hand-written", "target", ""], [r[:4] for r in rows])
    return head + _table(
        ["measurement", "hamjax / hand-written", "target", "", "hamjax / hamux", "target", ""],
        rows)


def memory(folder: Path) -> list[str]:
    """Compiled memory of the implicit and the BPTT gradient as the steps grow."""
    res = timing(folder)
    figs = figures(res, "training")
    steps = sorted({int(k.split()[-2]) for k in figs if " memory at " in k})
    if not steps:
        raise ReportError("no memory figures in the training section")
    rows = [[n, C.fmt_figure(_figure(figs, f"bptt memory at {n} steps", "training")),
             C.fmt_figure(_figure(figs, f"implicit memory at {n} steps", "training"))]
            for n in steps]
    return [provenance(res, _timing_path(folder)), ""] + _table(
        ["relaxation steps", "BPTT gradient", "implicit gradient"], rows)


def _steady_timing(folder: Path) -> tuple[dict[str, Any], str]:
    """The steady_state section's results and their path: a run of that section alone
    (``python -m benchmarks --only steady_state --repeat N --out <folder>/steady-state``) where
    one is committed, newer than the whole suite's; else the suite's."""
    alone = folder / "steady-state" / "results.json"
    if alone.exists():
        return _read(alone), _rel(alone)
    return timing(folder), _timing_path(folder)


def steady_state(folder: Path) -> list[str]:
    """One training step per gradient estimator, as a multiple of a 40-step BPTT step, and the
    implicit step as a multiple of a hand-written DEQ step."""
    res, path = _steady_timing(folder)
    figs = figures(res, "steady_state")
    table: dict[str, dict[str, dict]] = {}
    models: list[str] = []
    for key, f in figs.items():
        for tail, suffix in ((" / BPTT", ""), (" / hand-written DEQ", " ÷ hand-written DEQ")):
            if key.endswith(tail):
                model, method = key[: -len(tail)].split(": ", 1)
                table.setdefault(method + suffix, {})[model] = f
                if model not in models:
                    models.append(model)
    if not table:
        raise ReportError("no training-step figures in the steady_state section")
    rows = []
    for method, per_model in table.items():
        fs = [per_model.get(m) for m in models]
        # one target, or one per model where they differ (EqProp: untrained and trained)
        target = " / ".join(dict.fromkeys(C.fmt_target(f) for f in fs
                                          if f and f["target"] is not None))
        verdicts = {C.fmt_met(f) for f in fs if f and f["target"] is not None}
        rows.append([method, *(C.fmt_figure(f) if f else "n/a" for f in fs), target,
                     "MISSED" if "MISSED" in verdicts else "met" if verdicts else ""])
    return [provenance(res, path), "", "Step time ÷ a 40-step BPTT step (rows marked ÷ "
            "hand-written DEQ: ÷ that step instead):", ""] + _table(
        ["gradient", *(f"{m} model" for m in models), "target", ""], rows)


def solvers(folder: Path) -> list[str]:
    """Forward solvers to a residual of 1e-4, and the adjoint's linear solvers."""
    res, path = _steady_timing(folder)
    figs = figures(res, "steady_state")
    fwd, adj, per_it = [], [], []
    for key, f in figs.items():
        model, rest = key.split(": ", 1)
        if rest.endswith(" per iteration"):
            per_it.append([model, C.fmt_figure(f), C.fmt_target(f), C.fmt_met(f)])
            continue
        if rest.startswith("forward ") and rest.endswith(" evaluations"):
            name = rest[len("forward "): -len(" evaluations")]
            ratio = figs.get(f"{model}: forward {name} / ODE")
            fwd.append([model, name, C.fmt_figure(f),
                        "1 (reference)" if ratio is None else C.fmt_figure(ratio)])
        elif rest.startswith("adjoint ") and rest.endswith(" products"):
            name = rest[len("adjoint "): -len(" products")]
            t = _figure(figs, f"{model}: adjoint {name} time", "steady_state")
            adj.append([model, name, C.fmt_figure(f), C.fmt_figure(t)])
    if not fwd or not adj:
        raise ReportError("no forward/adjoint figures in the steady_state section")
    if per_it:
        fwd_it = (["", "The fixed point's time per iteration ÷ a hand-written while loop's:", ""]
                  + _table(["model", "ratio", "target", ""], per_it))
    else:
        fwd_it = []
    return ([provenance(res, path), "", "Forward, to a residual of 1e-4:", ""]
            + _table(["model", "solver", "vector-field evaluations", "time / adaptive ODE"],
                     fwd) + fwd_it
            + ["", "Adjoint system (CH − I)ᵀ v = ∂ℓ/∂x at the steady state:", ""]
            + _table(["model", "linear solver", "matrix-vector products (at most)", "time"],
                     adj))


def relaxation(folder: Path) -> list[str]:
    """Relaxing noisy digits to a residual tolerance: evaluations and time per method."""
    res = timing(folder)
    figs = figures(res, "solvers")
    rows = []
    for key, f in figs.items():
        if key.endswith(" evaluations"):
            case, method = key[: -len(" evaluations")].split(": ", 1)
            ratio = figs.get(f"{case}: {method} / adaptive")
            rows.append([case, method, C.fmt_figure(f),
                         "1 (reference)" if ratio is None else C.fmt_figure(ratio)])
    if not rows:
        raise ReportError("no figures in the solvers section")
    return [provenance(res, _timing_path(folder)), ""] + _table(
        ["model, batch", "method", "vector-field evaluations", "time / adaptive"], rows)


def sharding(folder: Path) -> list[str]:
    """Throughput on 1, 2, 4 devices, and on 2 processes, relative to one device."""
    res = timing(folder)
    figs = figures(res, "sharding")
    rows = []
    for key, f in figs.items():
        if key.endswith(": fit"):
            relax = _figure(figs, key[: -len("fit")] + "relax", "sharding")
            rows.append([key.split(":")[0].replace(" devices", ""), C.fmt_figure(f),
                         C.fmt_figure(relax)])
    return [provenance(res, _timing_path(folder)), ""] + _table(
        ["platform, devices", "train-step throughput / 1 device", "relax throughput / 1 device"],
        rows)


def scaling(folder: Path) -> list[str]:
    """An Euler step's throughput against plain matmuls of the same shapes."""
    res = timing(folder)
    figs = figures(res, "scaling")
    lo = _figure(figs, "fraction of matmul, lowest", "scaling")
    hi = _figure(figs, "fraction of matmul, highest", "scaling")
    return [provenance(res, _timing_path(folder)), "",
            f"An Euler step of `hj.relax` runs at {C.fmt_figure(lo)} (lowest over the sweeps of "
            f"batch, width and depth) to {C.fmt_figure(hi)} (highest) of the throughput of plain "
            "`jnp` matmuls of the same shapes."]


# each record's published anchor, from the current run list (a record made before its anchor
# was written still stands beside it)
ANCHORS = {spec.name: spec.anchor for spec in Q.every_spec()}
TARGETS = {spec.name: spec.target for spec in Q.every_spec()}


def _target(r: Mapping[str, Any]) -> str:
    """``≥ t: met`` or ``≥ t: missed`` for a row with a target, else "—": judged by the row's
    figure, or by the median over its seeds where it ran several (a failed seed counts as
    missing the target)."""
    t = TARGETS.get(r["name"])
    if t is None:
        return "—"
    v = (r.get("headline") or {}).get("value") if r.get("status", "ok") == "ok" else None
    others = r.get("other_seeds") or []
    if not others:
        return f"≥ {t:g}: " + ("met" if v is not None and v >= t else "missed")
    vals = [-math.inf if x is None else x for x in [v, *(o["value"] for o in others)]]
    med = statistics.median(vals)
    return f"≥ {t:g}: " + ("met" if med >= t else "missed") + f" (median of {len(vals)} seeds)"


def quality_table(folder: Path) -> list[str]:
    """The training results: one row per quality record, beside the published numbers it
    answers."""
    recs = quality(folder)
    rows = []
    for r in recs:
        anchor = ANCHORS.get(r["name"]) or r.get("anchor") or "—"
        rows.append([r["title"], f"`{r['command']}`", _headline(r), _target(r), anchor,
                     "n/a" if r.get("converged") is None else f"{r['converged']:.3f}",
                     r["epochs"], _seconds(r.get("wall_s")), _seconds(r.get("train_seconds"))])
    machines = sorted({_machine(r["machine"]) for r in recs})
    dates = sorted(r["started"][:10] for r in recs)
    head = (f"_Generated from `{_rel(folder / 'quality')}/` ({'; '.join(machines)}; "
            f"{dates[0]}{'' if dates[0] == dates[-1] else ' to ' + dates[-1]}; "
            f"`python -m benchmarks --only quality`; load average {_load(recs)}): one run "
            "each, seed 0 unless the command says otherwise (further seeds where named); wall "
            "time includes start-up, compilation and pictures, and grows with the machine's "
            "load._")
    return [head, ""] + _table(["task", "command", "result", "target", "published",
                                "relaxations converged",
                                "epochs", "wall time", "training time"], rows)


def quickstart(folder: Path) -> list[str]:
    """What ``hamjax train`` printed when its quality record was made."""
    recs = {r["name"]: r for r in quality(folder)}
    if DEFAULT_RUN not in recs:
        raise ReportError(f"no quality record of the default `hamjax train` ({DEFAULT_RUN})")
    r = recs[DEFAULT_RUN]
    out = r.get("stdout_tail")
    if not out:
        raise ReportError(f"the {DEFAULT_RUN} record has no stdout_tail")
    return [f"_Generated from `{_rel(folder / 'quality' / (DEFAULT_RUN + '.json'))}` "
            f"({_machine(r['machine'])}, {r['started'][:10]}): `hamjax train` took "
            f"{_seconds(r['wall_s'])} wall, {_seconds(r['train_seconds'])} of it training._",
            "", "```", *out.rstrip("\n").splitlines(), "```"]


def _load(recs: list[Mapping[str, Any]]) -> str:
    """The range of the 1-minute load averages seen before and after the runs."""
    loads = [x for r in recs for x in r.get("loadavg") or []]
    return "n/a" if not loads else f"{min(loads):.1f}–{max(loads):.1f}"


def _headline(r: Mapping[str, Any]) -> str:
    if r.get("status", "ok") != "ok":
        return f"failed ({r.get('error')})"
    h = r["headline"]
    name = h["name"].removeprefix("test_").replace("_", " ")
    if "psnr" in h["name"]:
        text = f"{name.upper()} **{h['value']:.2f} dB**"
        if h.get("baseline") is not None:
            what = {"test_psnr_nearest": "nearest training image"}.get(
                h.get("baseline_name"), "corrupted input")
            mean = (f"training mean {h['mean_fill']:.2f} dB, "
                    if h.get("mean_fill") is not None else "")
            text += f" ({mean}{what} {h['baseline']:.2f} dB)"
        return text
    text = f"{name} **{h['value']:.4f}**"
    others = r.get("other_seeds") or []
    if others:
        vals = ", ".join("failed" if o["value"] is None else f"{o['value']:.4f}"
                         for o in others)
        seeds = ", ".join(str(o["seed"]) for o in others)
        text += f" (seed {r.get('seed', 0)}; seeds {seeds}: {vals})"
    return text


def _seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


_BASELINES = ("corrupted input", "training mean", "nearest", "PCA", "modern Hopfield")


def memory_baselines(folder: Path) -> list[str]:
    """The memory tasks' baselines (``--only memories``): PSNR of each restoration per dataset
    and corruption, the best marked."""
    path = folder / "memories" / "results.json"
    res = _read(path)
    sec = res["sections"]["memories"]
    rows = []
    d0 = next(iter(sec["data"].values()))
    ham = "ham_recipe" in d0
    methods = _BASELINES + (("HAM",) if ham else ())
    for name, d in sec["data"].items():
        for kind, c in d["corruptions"].items():
            extra = {"PCA": f" (k = {c['pca_k']})",
                     "modern Hopfield": f" (β = {c['hopfield_beta']:g})"}
            if ham:
                extra["HAM"] = f" ({c['ham_converged']:.1%} converged)"
            cells = [f"{c['psnr'][m]:.2f}{extra.get(m, '')}" for m in methods]
            row = [name, kind] + [f"**{v}**" if m == c["best"] else v
                                  for m, v in zip(methods, cells, strict=True)]
            if ham:
                margin = c["ham_margin_db"]
                met = margin >= 1.0 and c["ham_converged"] >= 0.99
                row.append(f"{margin:+.2f} ({'met' if met else 'MISSED'})")
            rows.append(row)
    where = (f"_Generated from `{_rel(path)}` ({_machine(res['machine'])}; "
             f"{res['started'][:10]}; `{res['command']}`): one run, restorations are "
             "deterministic given the seeds._")
    return [where,
            f"PSNR in dB on {d0['test_images']:,} test images, of the hidden pixels for "
            "completion and of every pixel for denoising; k and β chosen on "
            f"{d0['validation_images']:,} held-out training images; the nearest image and the "
            f"modern Hopfield network store the other {d0['train_images_stored']:,}."
            + (f" HAM: `hj.models.dense_memory` with {d0['ham_recipe']['hidden']} tanh "
               f"features, trained at the steady state for {d0['ham_recipe']['epochs']} epoch(s) "
               "on the stored images (implicit differentiation), the noisy image clamped as "
               "evidence for denoising, the visible pixels frozen for completion; its margin "
               "over the best baseline against the target (≥ 1 dB with ≥ 99 % of relaxations "
               "converged)." if ham else ""), ""
            ] + _table(["dataset", "corruption", "corrupted input", "training mean", "nearest",
                        "PCA", "modern Hopfield"]
                       + (["HAM", "HAM − best baseline (dB)"] if ham else []), rows)


RENDERERS: dict[str, Callable[..., list[str]]] = {
    "speed": speed, "memory": memory, "steady-state": steady_state, "solvers": solvers,
    "relaxation": relaxation, "sharding": sharding, "scaling": scaling,
    "quality": quality_table, "quickstart": quickstart, "memory-baselines": memory_baselines,
}


# ------------------------------------------------------------------------------ reproducing
def compare(stated: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each figure of ``stated`` (committed results) against the same figure of ``fresh`` (a
    re-run): ``within`` when the fresh value lies in the stated ``[lo, hi]``."""
    rows = []
    for name, sec in stated["sections"].items():
        other = fresh["sections"].get(name, {}).get("figures", {})
        for key, f in sec.get("figures", {}).items():
            if key in other:
                v = other[key]["value"]
                rows.append({"section": name, "key": key, "label": f["label"], "stated": f,
                             "fresh": other[key], "within": f["lo"] <= v <= f["hi"]})
    return rows


def _print_comparison(rows: list[dict[str, Any]]) -> None:
    print("| section | figure | stated | re-run | within |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['section']} | {r['label']} | {C.fmt_figure(r['stated'])} | "
              f"{C.fmt_figure(r['fresh'])} | {'yes' if r['within'] else 'NO'} |")
    n = sum(r["within"] for r in rows)
    print(f"\n{n} of {len(rows)} re-run figures lie within the stated range")


# ------------------------------------------------------------------------------ rewriting files
def render_text(text: str, where: str = "<text>", results: Path = RESULTS) -> str:
    """``text`` with every generated block rewritten from the results files under ``results``
    (one folder per machine)."""

    def block(m: re.Match) -> str:
        name = m["name"]
        if name not in RENDERERS:
            raise ReportError(f"{where}: unknown report block {name!r} "
                              f"(known: {', '.join(RENDERERS)})")
        kw = dict(a.split("=", 1) for a in m["args"].split())
        unknown = set(kw) - {"machine"}
        if unknown:
            raise ReportError(f"{where}: report block {name!r} takes only machine=, "
                              f"got {', '.join(sorted(unknown))}")
        try:
            lines = RENDERERS[name](Path(results) / kw.get("machine", DEFAULT_MACHINE))
        except ReportError as e:
            raise ReportError(f"{where}, block {name!r}: {e}") from None
        return (f"<!-- report:{name}{m['args']} -->\n" + "\n".join(lines)
                + f"\n<!-- /report:{name} -->")

    return BLOCK.sub(block, text)


def documents(root: Path = ROOT) -> list[Path]:
    """README.md and every markdown page of docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                description="rewrite README/docs figure blocks from results files")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 when a block differs from the results files")
    p.add_argument("--results", type=Path, default=RESULTS,
                   help="folder of per-machine results (default: benchmarks/results)")
    p.add_argument("--compare", type=Path, default=None, metavar="DIR",
                   help="print whether each figure of a re-run (DIR/results.json) lies within the "
                        "range the committed timing results state (--machine's)")
    p.add_argument("--machine", default=DEFAULT_MACHINE, help="machine folder for --compare")
    p.add_argument("files", nargs="*", type=Path, help="default: README.md and docs/**/*.md")
    args = p.parse_args(argv)
    if args.compare is not None:
        try:
            stated = timing(args.results / args.machine)
            fresh = _read(args.compare / "results.json")
        except ReportError as e:
            print(f"report: {e}", file=sys.stderr)
            return 2
        _print_comparison(compare(stated, fresh))
        return 0
    stale = []
    for path in args.files or documents():
        text = path.read_text()
        try:
            new = render_text(text, str(path), args.results)
        except ReportError as e:
            print(f"report: {e}", file=sys.stderr)
            return 2
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    verb = "differ from the results files" if args.check else "rewritten"
    for path in stale:
        print(f"{path}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
