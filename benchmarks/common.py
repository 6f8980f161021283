"""Shared benchmark machinery: configuration tiers, compilation and timing, statistics, machine
description, and the JSON / markdown / PNG writers.

Timing rules (DESIGN.md, "Performance targets"):

* every contender is compiled ahead of time (``jax.jit(f).lower(*args).compile()``); the compile
  time is reported separately and never mixed into run times;
* contenders that are compared are timed *side by side*: repeats alternate between them (the
  order rotates every repeat), so slow drifts of a shared machine hit all of them alike;
* each timed sample runs the compiled function ``number`` times, blocking on the result
  (``jax.block_until_ready``) after every call; a sample's time is the mean per call;
* a ratio ``a / b`` is computed per repeat (the two samples were taken next to each other) and
  reported as the median with the interquartile range of those paired ratios.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

TIERS = ("tiny", "quick", "full")


# ------------------------------------------------------------------------------ configuration
@dataclasses.dataclass
class Config:
    """How big and how careful a run is.

    ``tier``: ``"tiny"`` (tests: seconds), ``"quick"`` (a few minutes on a laptop CPU) or
    ``"full"`` (a GPU, or a patient CPU). ``repeats``: timed samples per contender;
    ``min_sample_s``: each sample runs the function often enough to last about this long.
    ``runs``: the quality section runs only the records of these names (None: all)."""

    tier: str = "quick"
    out: Path = Path("results")
    repeats: int = 7
    min_sample_s: float = 0.2
    data_dir: Path | None = None
    runs: tuple[str, ...] | None = None  # quality: only the runs of these names

    def pick(self, tiny, quick, full):
        return {"tiny": tiny, "quick": quick, "full": full}[self.tier]

    @classmethod
    def for_tier(cls, tier: str, out, data_dir=None) -> Config:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        repeats = {"tiny": 3, "quick": 7, "full": 11}[tier]
        min_s = {"tiny": 0.0, "quick": 0.15, "full": 0.5}[tier]
        return cls(tier=tier, out=Path(out), repeats=repeats, min_sample_s=min_s,
                   data_dir=None if data_dir is None else Path(data_dir))


RESULTS = Path(__file__).resolve().parent / "results"


def default_out(only=None, m: Mapping[str, Any] | None = None) -> Path:
    """``benchmarks/results/<machine>/timing`` (speed and memory), ``.../quality`` (training
    results, ``--only quality``) or ``.../memories`` (the memory tasks' baselines, ``--only
    memories``): each machine its own folder, so a GPU's results never mix with a CPU's."""
    kind = (list(only)[0] if only is not None and list(only) in (["quality"], ["memories"])
            else "timing")
    return RESULTS / machine_slug(m) / kind


def default_data_dir() -> Path | None:
    """The shared MNIST folder of this project (``../shared/data/mnist``), when present."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent.parent / "shared" / "data" / "mnist",
                 here.parent / "shared" / "data" / "mnist"):
        if any((cand / f).exists() for f in ("t10k-images-idx3-ubyte.gz",
                                             "t10k-images-idx3-ubyte")):
            return cand
    return None


# ------------------------------------------------------------------------------ machine
def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    devs = jax.devices()
    cpu_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    import diffrax
    import equinox

    return {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devs],
        "device_kind": devs[0].device_kind,
        "num_devices": len(devs),
        "cpu": cpu_name,
        "cpu_cores": cores,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(
            jax.lib, "__version__") else jax.__version__, "equinox": equinox.__version__,
            "diffrax": diffrax.__version__, "hamux": hamux_version()},
    }


def machine_slug(m: Mapping[str, Any] | None = None) -> str:
    """A short folder name for a machine: ``cpu-2core-<model>`` or ``gpu-<device kind>``."""
    m = machine() if m is None else m
    if m["backend"] == "cpu":
        model = re.sub(r"\(R\)|\(TM\)|CPU|Processor|@.*", "", str(m["cpu"]))
        model = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:32] or "cpu"
        return f"cpu-{m['cpu_cores']}core-{model}"
    kind = re.sub(r"[^a-z0-9]+", "-", str(m["device_kind"]).lower()).strip("-")
    return f"{m['backend']}-{kind}"


def hamux_version() -> str | None:
    try:
        import hamux

        return getattr(hamux, "__version__", "unknown")
    except Exception:  # noqa: BLE001 - an optional dependency may fail in any way
        return None


# ------------------------------------------------------------------------------ compilation
@dataclasses.dataclass
class Compiled:
    """A function compiled ahead of time for one set of arguments."""

    name: str
    call: Callable[[], Any]
    compile_s: float
    temp_bytes: int | None
    argument_bytes: int | None
    output_bytes: int | None


def compile_fn(name: str, f: Callable, *args) -> Compiled:
    """``jax.jit(f).lower(*args).compile()``, timed. Non-array leaves of ``args`` (e.g. functions
    inside modules) are closed over; arrays are arguments (never baked in as constants)."""
    dyn, static = eqx.partition(args, eqx.is_array)

    def g(d):
        return f(*eqx.combine(d, static))

    t0 = time.perf_counter()
    compiled = jax.jit(g).lower(dyn).compile()
    compile_s = time.perf_counter() - t0
    mem = _memory(compiled)

    def call():
        return compiled(dyn)

    # the first run (allocations, thread pools) is not a timed sample either
    jax.block_until_ready(call())
    return Compiled(name, call, compile_s, *mem)


def _memory(compiled) -> tuple[int | None, int | None, int | None]:
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None, None, None
    if ma is None:
        return None, None, None
    get = lambda k: int(getattr(ma, k)) if hasattr(ma, k) else None  # noqa: E731
    return get("temp_size_in_bytes"), get("argument_size_in_bytes"), get("output_size_in_bytes")


def device_peak_bytes() -> int | None:
    """The device allocator's peak (GPU/TPU); ``None`` where the backend keeps no statistics
    (CPU), in which case compiled temp bytes are the memory figure."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats:
        return None
    return stats.get("peak_bytes_in_use")


# ------------------------------------------------------------------------------ timing
def _sample(call, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(call())
    return (time.perf_counter() - t0) / number


def time_side_by_side(contenders: list[Compiled], cfg: Config,
                      repeats: int | None = None) -> dict[str, dict[str, Any]]:
    """Time compiled contenders in alternation. Returns per contender: ``samples`` (seconds per
    call, one per repeat, in repeat order), ``median_s``, ``q25_s``, ``q75_s``, ``number``
    (calls per sample) and ``compile_s``."""
    repeats = cfg.repeats if repeats is None else repeats
    numbers = {}
    for c in contenders:
        t = _sample(c.call, 1)
        numbers[c.name] = max(1, min(1000, math.ceil(cfg.min_sample_s / max(t, 1e-7))))
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    k = len(contenders)
    for r in range(repeats):
        order = contenders[r % k:] + contenders[: r % k]
        for c in order:
            samples[c.name].append(_sample(c.call, numbers[c.name]))
    out = {}
    for c in contenders:
        s = np.asarray(samples[c.name])
        out[c.name] = {
            "samples_s": s.tolist(),
            "median_s": float(np.median(s)),
            "q25_s": float(np.percentile(s, 25)),
            "q75_s": float(np.percentile(s, 75)),
            "number": numbers[c.name],
            "compile_s": c.compile_s,
            "temp_bytes": c.temp_bytes,
        }
    return out


def ratio(times: Mapping[str, Mapping[str, Any]], a: str, b: str) -> dict[str, float]:
    """``a / b`` from samples taken side by side: median and IQR of the per-repeat ratios."""
    ra = np.asarray(times[a]["samples_s"]) / np.asarray(times[b]["samples_s"])
    return {"median": float(np.median(ra)), "q25": float(np.percentile(ra, 25)),
            "q75": float(np.percentile(ra, 75))}


def fmt_ratio(r: Mapping[str, float] | None) -> str:
    if r is None:
        return "n/a"
    return f"{r['median']:.3f} [{r['q25']:.3f}–{r['q75']:.3f}]"


def fmt_time(s: float | None) -> str:
    if s is None or (isinstance(s, float) and not math.isfinite(s)):
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_bytes(b: int | None) -> str:
    if b is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(b) < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return str(b)


def check_close(name: str, a, b, tol: float = 1e-3) -> float:
    """Largest absolute difference between two pytrees; raises if contenders disagree (a
    benchmark of two different computations measures nothing)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    err = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb,
                                                                                     strict=True))
    if not err <= tol:
        raise AssertionError(f"{name}: contenders disagree (max abs difference {err:.3g})")
    return err


# ------------------------------------------------------------------------------ results
def section(tables=None, data=None, notes=None, plots=None, figures=None) -> dict[str, Any]:
    """A section's results. ``figures``: ``{key: figure(...)}``, the numbers a README or docs page
    may quote (``python -m benchmarks.report`` renders them; ``--repeat`` combines them)."""
    return {"tables": tables or [], "data": data or {}, "notes": notes or [], "plots": plots or [],
            "figures": figures or {}}


def figure(label: str, value: float, *, lo: float | None = None, hi: float | None = None,
           unit: str = "", target: float | None = None, better: str = "lower",
           spread: str | None = None) -> dict[str, Any]:
    """One quotable number: its ``value`` with a spread ``[lo, hi]`` (within one run: the
    interquartile range of paired samples; over ``--repeat`` runs: the range of the runs' values),
    a ``unit`` and, when it has one, a ``target`` that a ``better="lower"`` figure meets when its
    upper end ``hi`` is at most the target (``"higher"``: when ``lo`` is at least the target)."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    value = float(value)
    return {"label": label, "value": value, "lo": value if lo is None else float(lo),
            "hi": value if hi is None else float(hi), "unit": unit, "target": target,
            "better": better, "spread": spread or ("IQR" if lo is not None else "one value")}


def ratio_figure(label: str, r: Mapping[str, float], target: float | None = None) -> dict:
    """A :func:`figure` of a side-by-side ratio from :func:`ratio` (median, IQR)."""
    return figure(label, r["median"], lo=r["q25"], hi=r["q75"], unit="×", target=target,
                  spread="IQR")


def target_met(fig: Mapping[str, Any]) -> bool | None:
    """Whether a figure meets its target over its whole spread (``None`` without a target)."""
    if fig.get("target") is None:
        return None
    if fig["better"] == "lower":
        return fig["hi"] <= fig["target"]
    return fig["lo"] >= fig["target"]


def fmt_target(fig: Mapping[str, Any]) -> str:
    """``≤ 1.05`` (or ``≥ …`` for a higher-is-better figure); empty without a target."""
    if fig.get("target") is None:
        return ""
    return f"{'≤' if fig['better'] == 'lower' else '≥'} {fig['target']:g}"


def fmt_met(fig: Mapping[str, Any]) -> str:
    """``met`` / ``MISSED`` over the figure's whole spread; empty without a target."""
    met = target_met(fig)
    return "" if met is None else "met" if met else "MISSED"


def fmt_figure(fig: Mapping[str, Any], digits: int | None = None) -> str:
    """``value [lo–hi] unit``; the brackets are left out when the spread is nil."""
    v, lo, hi = fig["value"], fig["lo"], fig["hi"]
    if digits is None:
        big = max(abs(v), abs(lo), abs(hi))
        whole = all(float(x).is_integer() for x in (v, lo, hi))
        digits = 0 if big >= 100 or whole else 1 if big >= 10 else 2 if big >= 0.1 else 3
    f = lambda x: f"{x:,.{digits}f}"  # noqa: E731
    unit = fig.get("unit") or ""
    sep = "" if unit in ("", "×", "%") else " "
    text = f(v) if f(lo) == f(hi) else f"{f(v)} [{f(lo)}–{f(hi)}]"
    return text + sep + unit


def table(title: str, columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"title": title, "columns": columns, "rows": [[_cell(v) for v in r] for r in rows]}


def _cell(v):
    if isinstance(v, float):
        return float(f"{v:.6g}")
    return v if isinstance(v, int | str) or v is None else str(v)


def to_markdown(results: Mapping[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"# hamjax benchmarks ({results['tier']})",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['started']}",
        f"- machine: {m['backend']} · {', '.join(m['devices'])} · {m['cpu']} "
        f"({m['cpu_cores']} cores)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        "Times are medians over alternating repeats; ratios are medians of per-repeat ratios "
        "with the interquartile range in brackets. Compile time is excluded from run times.",
        "",
    ]
    for name, sec in results["sections"].items():
        lines += [f"## {name}", ""]
        if "error" in sec:
            lines += [f"**failed:** `{sec['error']}`", ""]
        if sec.get("figures"):
            lines += ["### Figures", "", "| figure | value [spread] | spread | target | met |",
                      "|---|---|---|---|---|"]
            for f in sec["figures"].values():
                lines.append(f"| {f['label']} | {fmt_figure(f)} | {f['spread']} | "
                             f"{fmt_target(f)} | {fmt_met(f)} |")
            lines.append("")
        for t in sec.get("tables", []):
            lines += [f"### {t['title']}", "", "| " + " | ".join(t["columns"]) + " |",
                      "|" + "---|" * len(t["columns"])]
            for r in t["rows"]:
                lines.append("| " + " | ".join("" if v is None else str(v) for v in r) + " |")
            lines.append("")
        for n in sec.get("notes", []):
            lines.append(f"- {n}")
        if sec.get("notes"):
            lines.append("")
        for p in sec.get("plots", []):
            lines += [f"![{p}]({p})", ""]
        if "seconds" in sec:
            lines += [f"_section wall time: {sec['seconds']:.1f} s_", ""]
    return "\n".join(lines)


def write_results(results: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "results.json", out / "results.md"
    jpath.write_text(json.dumps(results, indent=1, default=_json_default))
    mpath.write_text(to_markdown(results))
    return jpath, mpath


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def pyplot():
    """matplotlib with a non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(fig, cfg: Config, name: str) -> str:
    cfg.out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(cfg.out / name, dpi=80)
    pyplot().close(fig)
    return name
