"""``python -m benchmarks [--quick | --full | --tiny] [--out DIR] [--only NAME ...] [--repeat N]``.

``--repeat N`` runs the whole selection N times, each in a fresh process, into
``DIR/repeats/<i>/``, and writes the combined results to ``DIR``: every figure is the median of
the N runs' values with their range (:mod:`benchmarks.repeat`)."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import common as C

SECTIONS = ("dynamics", "training", "solvers", "steady_state", "scaling", "end_to_end", "capacity",
            "sharding", "quality", "memories")
# measured only when named (--only): training runs and restorations, not speed
NAMED_ONLY = ("quality", "memories")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (as ``hamjax``'s): the problem and where help is."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="hamjax benchmarks: JSON + markdown + PNG results")
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--quick", dest="tier", action="store_const", const="quick",
                      help="a few minutes on a CPU (default on CPU)")
    tier.add_argument("--full", dest="tier", action="store_const", const="full",
                      help="the full suite (default on GPU/TPU)")
    tier.add_argument("--tiny", dest="tier", action="store_const", const="tiny",
                      help="tiny sizes, seconds: checks that everything runs (tests)")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default benchmarks/results/<machine>/timing, or "
                        ".../quality for --only quality)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None, metavar="NAME",
                   help=f"run only these sections: {', '.join(SECTIONS)}")
    p.add_argument("--runs", nargs="+", default=None, metavar="NAME",
                   help="quality: run only the records of these names (the others are kept)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="MNIST IDX folder (default: the project's shared copy when present)")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per contender")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="run the whole selection N times in fresh processes and report each "
                        "figure as the median of the runs with their range")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first failing section instead of recording the error")
    return p


def _module(name: str):
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ImportError as e:  # capacity.py is written elsewhere; absent is fine
        if name == "capacity" and e.name in ("benchmarks.capacity", None):
            return None
        raise


def run(tier: str = "quick", out=None, only=None, data_dir=None, repeats=None,
        strict: bool = False, argv=None, runs=None) -> dict:
    """Run the suite; return the results dict (also written to ``out``)."""
    import jax

    from . import common as C

    m = C.machine()
    out = Path(out) if out is not None else C.default_out(only, m)
    cfg = C.Config.for_tier(tier, out, data_dir)
    if repeats is not None:
        cfg.repeats = repeats
    cfg.runs = None if runs is None else tuple(runs)
    results = {"tier": tier, "started": C.now(), "machine": m,
               "command": "python -m benchmarks " + shlex.join(argv or [f"--{tier}"]),
               "config": {"repeats": cfg.repeats, "min_sample_s": cfg.min_sample_s,
                          "x64": bool(jax.config.jax_enable_x64)},
               "sections": {}}
    for name in only or [s for s in SECTIONS if s not in NAMED_ONLY]:
        mod = _module(name)
        if mod is None:
            continue
        print(f"[benchmarks] {name} ({tier}) ...", flush=True)
        t0 = time.perf_counter()
        try:
            sec = _call(mod, cfg)
        except Exception as e:  # noqa: BLE001 - record and go on: one section must not sink all
            if strict:
                raise
            traceback.print_exc()
            sec = C.section(notes=[f"section failed: {type(e).__name__}: {e}"])
            sec["error"] = f"{type(e).__name__}: {e}"
        sec["seconds"] = time.perf_counter() - t0
        results["sections"][name] = sec
        C.write_results(results, out)  # after every section: a crash keeps what was measured
        print(f"[benchmarks] {name}: {sec['seconds']:.1f} s", flush=True)
    results["finished"] = C.now()
    jpath, mpath = C.write_results(results, out)
    print(f"[benchmarks] wrote {jpath}, {mpath}")
    return results


def _call(mod, cfg: C.Config) -> dict:
    from . import common as C

    if mod.__name__.endswith("capacity"):
        # capacity.run(quick=..., out=...) returns rows of measured vs theory: make them a table
        # (it also writes capacity.json / capacity.md into the results folder)
        res = mod.run(quick=cfg.tier != "full", out=cfg.out)
        rows = [[r["model"], r["N"], r["K"], r["quantity"], r["measured"], r["theory"],
                 r["ratio"]] for r in res["rows"]]
        tab = C.table("Capacity: measured vs theory (random ±1 patterns)",
                      ["model", "N", "K", "quantity", "measured", "theory", "measured/theory"],
                      rows)
        notes = ["theory: Φ(−√(c N^(n−1)/((2n−3)!! K))), c = 1 (Hebbian) and 2 (rectified "
                 "x³); exact fixed points (1 − p)^N; exponential DAM: fraction recovered"]
        return C.section([tab], data=res, notes=notes)
    return mod.run(cfg)


def main(argv=None, prog: str = "python -m benchmarks") -> int:
    """Run the command line ``argv``; ``prog`` is the name its messages give it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)  # before JAX's import: --help and usage errors answer at once
    from . import common as C

    if args.repeat is not None and args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    tier = args.tier
    if tier is None:
        import jax

        tier = "quick" if jax.default_backend() == "cpu" else "full"
    if args.repeat is not None:
        from . import repeat

        out = args.out if args.out is not None else C.default_out(args.only)
        res = repeat.run_repeated(args.repeat, argv, out)
    else:
        res = run(tier, args.out, args.only, args.data_dir, args.repeats, args.strict, argv,
                  args.runs)
    failed = [n for n, s in res["sections"].items() if "error" in s]
    if failed:
        print(f"[benchmarks] sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
