"""The commands ``train``, ``eval``, ``analyze`` and ``bench``: a config builds the data, the
model, the task, the gradient estimator and the optimiser (:mod:`._build`), and
:mod:`hamjax.train` runs them; this module runs the command (the run folder, several processes,
the report)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from ._build import build, completion_baselines, load_data, optimizer
from ._figures import basins_figure, landscape_figure, pictures
from ._parser import UsageError, defaults
from ._runs import (
    Terminated,
    check_out,
    claim,
    clear_stale,
    config_of,
    lock,
    normalised,
    release,
    resumed_config,
    saved_config,
    stop_for_lost_peer,
    write_atomic,
    write_history,
)


def _mesh(cfg: dict, joined: bool = False):
    """The mesh of the run: every device of every process when several processes ``joined``;
    otherwise the ``--devices N`` mesh (None without the flag). Or a clear error."""
    if joined:
        import jax

        from ..sharding import make_mesh

        if cfg.get("devices") is not None:
            raise UsageError("--devices picks devices of one process; a multi-process run "
                             "splits each batch over every device of every process: drop "
                             "--devices")
        n = jax.device_count()
        if cfg["batch_size"] % n:
            raise UsageError(f"--batch-size {cfg['batch_size']} is not divisible by the {n} "
                             f"devices of the {jax.process_count()} processes; use a multiple "
                             f"of {n}")
        return make_mesh()
    if cfg.get("devices") is None:
        return None
    from ..sharding import ShardingError, make_mesh

    n = cfg["devices"]
    if cfg["batch_size"] % n:
        raise UsageError(f"--batch-size {cfg['batch_size']} is not "
                         f"divisible by --devices {n}; use a multiple of {n}")
    try:
        return make_mesh(n)
    except ShardingError as e:
        raise UsageError(f"--devices {n}: {e}") from None


def _prepare(cfg: dict, joined: bool = False):
    """Load the data and build the model for ``cfg``, checking what needs the data: the
    batch size and the number of memories against the training set."""
    from ..data import DataError

    mesh = _mesh(cfg, joined)
    try:
        data = load_data(cfg)
    except DataError as e:
        raise UsageError(f"{e}") from None
    limited = " (--limit-train)" if cfg.get("limit_train") else ""
    if cfg["batch_size"] > data.num_train:
        raise UsageError(f"--batch-size {cfg['batch_size']} exceeds the {data.num_train} "
                         f"training images{limited}; use at most {data.num_train}")
    if cfg["model"] == "memory" and cfg["hidden"][0] > data.num_train:
        raise UsageError(f"--hidden {cfg['hidden'][0]}: the memory model starts its memories "
                         f"as distinct training images, and there are {data.num_train}"
                         f"{limited}; use --hidden {data.num_train} or fewer")
    net, task, gradient = build(cfg, data)
    from ..train import check_classes

    try:
        check_classes(data, task)
    except DataError as e:
        raise UsageError(f"{e}") from None
    return data, net, task, gradient, mesh


# ---------------------------------------------------------------------------------- train
def train(args, given: set[str]) -> int:
    """``hamjax train``: check everything, then claim the run folder and train in it.

    Several processes (``--coordinator`` or ``--distributed``): each joins the run first, every
    process checks its flags and data and they compare (one failing or differing process stops
    them all, each with one line), then process 0 claims the folder and tells the others which
    it is; only process 0 writes in it."""
    joined = _join(args)
    cfg = saved = None
    notes: list[str] = []
    problem = ""
    try:
        cfg, saved, notes = _train_config(args, given)
        data, net, task, gradient, mesh = _prepare(cfg, joined)
    except UsageError as e:
        if not joined:
            raise
        problem = str(e)
    if joined:
        _agree(problem, cfg)

    from ..sharding import is_main_process

    main = is_main_process()
    out, created, held = args.out, False, None
    if main:
        try:
            # everything is checked: only now is anything written
            if saved is None:
                out, created, held = claim(out, cfg)
            else:
                held = lock(out)
        except UsageError as e:
            if not joined:
                raise
            problem = str(e)
    if joined:
        out = _shared_folder(out, problem)
    try:
        if main:
            for note in notes:
                print(f"hamjax train: note: {note}", file=sys.stderr)
        if saved is not None and main:
            try:
                write_atomic(out / "config.json", json.dumps(cfg, indent=2))
            except OSError as e:
                raise UsageError(f"cannot write to the run folder {out}: {e.strerror}"
                                 ) from None
        _train_in(out, created, cfg, data, net, task, gradient, mesh,
                  resume=saved is not None, progress=not args.no_progress, main=main)
    finally:
        if held is not None:
            os.close(held)  # closing the descriptor releases the lock
    return 0


def _join(args) -> bool:
    """Join a multi-process run when the flags ask for one (before any JAX computation):
    whether this process is one of several."""
    explicit = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
                "--process-id": args.process_id}
    named = [flag for flag, v in explicit.items() if v is not None]
    if not named and not args.distributed:
        return False
    if args.distributed and named:
        raise UsageError(f"--distributed reads the coordinator, the process count and the rank "
                         f"from the cluster's environment; drop {' '.join(named)}")
    if named and len(named) < 3:
        missing = " ".join(flag for flag in explicit if flag not in named)
        raise UsageError(f"{' '.join(named)} needs {missing} as well: --coordinator HOST:PORT "
                         "--num-processes N --process-id I")
    from ..sharding import DistributedError, initialize_distributed

    try:
        initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                               timeout=args.join_timeout)
    except DistributedError as e:
        raise UsageError(f"{e}") from None
    except (RuntimeError, ValueError) as e:  # cluster detection found no cluster
        raise UsageError(f"--distributed: {str(e).splitlines()[0]}") from None
    return True


def _agree(problem: str, cfg: dict | None) -> None:
    """Every process's check result and config, compared: a process whose checks failed, or
    processes started with different flags, stop every process with one line."""
    from ..sharding import gather_text

    config = json.dumps(cfg, sort_keys=True) if cfg is not None else ""
    said = [json.loads(t) for t in gather_text(json.dumps({"problem": problem,
                                                           "config": config}))]
    failed = [(i, s["problem"]) for i, s in enumerate(said) if s["problem"]]
    if failed:
        if problem:
            raise UsageError(problem)
        i, what = failed[0]
        raise UsageError(f"process {i} stopped: {what}")
    if len({s["config"] for s in said}) > 1:
        first = json.loads(said[0]["config"])
        for i, s in enumerate(said):
            other = json.loads(s["config"])
            keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            if keys:
                diff = ", ".join(f"{k}: {first.get(k)!r} vs {other.get(k)!r}" for k in keys)
                raise UsageError(f"process 0 and process {i} were started with different "
                                 f"settings ({diff}); start every process with the same flags")


def _shared_folder(out: Path | None, problem: str) -> Path:
    """The run folder process 0 claimed, told to every process (or process 0's error)."""
    from ..sharding import gather_text, is_main_process

    said = json.loads(gather_text(json.dumps({"out": str(out), "problem": problem}))[0])
    if said["problem"]:
        raise UsageError(problem if is_main_process() else f"process 0 stopped: "
                         f"{said['problem']}")
    return Path(said["out"])


def _train_config(args, given: set[str]) -> tuple[dict, tuple | None, list[str]]:
    """``(config, the saved (config, checkpoint header) when resuming, notes)`` for ``train``:
    a new run's config from the flags, a resumed run's from its folder. Notes are printed once
    every check has passed, so a refused command prints one line."""
    out = args.out
    saved = None
    notes = []
    if args.resume:
        if out is None:
            raise UsageError("--resume needs --out RUN_DIR")
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder")
        saved = saved_config(out)
        if saved is None:
            notes.append(f"--resume: {out} holds no run; starting a new one")
        elif not saved[1]:
            notes.append(f"--resume: no epoch of the run in {out} had finished; starting it "
                         "from the beginning")
    elif out is not None:
        check_out(out)
    if saved is None:
        cfg = defaults(config_of(args))
        cfg["schedule"] = [cfg["epochs"]]
    else:
        cfg, more = resumed_config(saved[0], args, given, out, saved[1])
        notes += more
    if cfg["gradient"] != "bptt" and {"steps", "dt0"} & given:
        raise UsageError(f"--steps and --dt0 set the relaxation of --gradient bptt; --gradient "
                         f"{cfg['gradient']} relaxes to a steady state (residual 1e-4)")
    return cfg, saved, notes


def _train_in(out: Path, created: bool, cfg: dict, data, net, task, gradient, mesh, *,
              resume: bool, progress: bool, main: bool = True) -> None:
    """Train in the claimed folder ``out``, then write its results (process 0 of several
    writes and prints; the others train beside it)."""
    from .. import train as T
    from ..sharding import local_replica

    ckpt = out / "checkpoint.eqx"
    if main:
        print(f"hamjax: {cfg['task']} on {data.name} ({data.num_train} train / {data.num_test} "
              f"test) with a {cfg['model']} HAM, {cfg['gradient']}, {cfg['epochs']} "
              f"epoch{'' if cfg['epochs'] == 1 else 's'} -> "
              f"{out}", flush=True)
    # the untrained model's test loss: the yardstick for "did this run learn anything"
    initial = T.evaluate(net, data.x_test, data.y_test, task, gradient, seed=cfg["seed"],
                         mesh=mesh)
    t0 = time.perf_counter()
    try:
        net, history = T.fit(
            net, data, task=task, gradient=gradient, optimizer=optimizer(cfg, data),
            epochs=cfg["epochs"], batch_size=cfg["batch_size"], seed=cfg["seed"],
            checkpoint=ckpt, resume=resume, config=cfg, progress=progress, mesh=mesh,
        )
    except (FloatingPointError, T.CheckpointError) as e:
        if not main:
            raise UsageError(f"{e}") from None
        raise UsageError(_failed(e, out, ckpt, cfg, created, not resume)) from None
    except OSError as e:
        # a full disk, a folder made read-only or deleted: one line, what was kept
        where = f" {e.filename}" if e.filename else ""
        raise UsageError(_failed(OSError(f"cannot write{where}: {e.strerror or e}"), out, ckpt,
                                 cfg, created, not resume)) from None
    except Exception as e:
        from ..sharding import lost_peer

        peer = lost_peer(e)
        if peer is not None:
            then = (f"; {_what_is_kept(out, ckpt, created, not resume)}; start every process "
                    "again with --resume to continue") if main else ""
            stop_for_lost_peer("train", peer, then)
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        # an allocation the device cannot satisfy: XLA's message is pages long
        first = str(e).strip().splitlines()[0][:200]
        raise UsageError(_failed(MemoryError(
            f"the device ran out of memory ({first}); use a smaller --batch-size (now "
            f"{cfg['batch_size']})"), out, ckpt, cfg, created, not resume)) from None
    except KeyboardInterrupt as e:
        # Ctrl-C (or SIGTERM, SIGHUP: Terminated) is how a run is paused: say how to continue,
        # not where Python was
        status = 128 + e.signum if isinstance(e, Terminated) else 130
        if not main:
            raise SystemExit(status) from None
        how = f"stopped by {e.name}" if isinstance(e, Terminated) else "interrupted"
        # a write the interrupt cut short between creating its temporary file and guarding it
        # leaves that file: this command holds the folder's lock, so any there is stale
        clear_stale(out)
        kept = _kept(out, ckpt) if ckpt.exists() else "no epoch had finished"
        print(f"\nhamjax train: {how}; {kept}; hamjax train --out {out} --resume "
              "continues it", file=sys.stderr)
        raise SystemExit(status) from None
    train_seconds = time.perf_counter() - t0
    if main:
        _finish(out, local_replica(net), history, initial, train_seconds, task, gradient, data,
                cfg)


def _kept(out: Path, ckpt: Path) -> str:
    """Which checkpoint a stopped run leaves behind."""
    from .. import train as T

    done = int(T.read_checkpoint_meta(ckpt).get("finished_epoch", -1)) + 1
    return f"the checkpoint of epoch {done} in {out} is kept"


def _what_is_kept(out: Path, ckpt: Path, created: bool, fresh: bool) -> str:
    """What a run that stopped early leaves, in words; a new run (``fresh``: its config.json is
    this command's) that saved nothing is removed, so no half-written folder stays behind."""
    if not out.exists():
        return f"the run folder {out} is gone"
    if ckpt.exists():
        return _kept(out, ckpt)
    release(out, created, ["config.json"] if fresh else [])
    return "nothing was saved" + (f" ({out} removed)" if not out.exists() else "")


def _failed(e: Exception, out: Path, ckpt: Path, cfg: dict, created: bool, fresh: bool) -> str:
    """The one-line message for a run that stopped (diverged, or a checkpoint that does not
    fit), with what it leaves (:func:`_what_is_kept`)."""
    kept = _what_is_kept(out, ckpt, created, fresh)
    if isinstance(e, FloatingPointError):
        dt = f" or --dt0 (now {cfg['dt0']:g})" if cfg.get("dt0") is not None else ""
        return (f"training diverged: {str(e).split(';')[0]}; {kept}; start a new run with a "
                f"lower --lr (now {cfg['lr']:g}){dt}")
    return f"{e}; {kept}"


def _finish(out, net, history, initial, train_seconds, task, gradient, data, cfg) -> None:
    """Write history.csv and metrics.json (atomically, before the pictures, so a picture that
    fails loses no numbers), then the pictures, and report."""
    write_history(out / "history.csv", history)
    last = history[-1] if history else {}
    metrics = {k: v for k, v in last.items() if k.startswith("test_")}
    metrics.update(
        initial_test_loss=initial["loss"],
        train_seconds=train_seconds,
        epochs=cfg["epochs"],
        steps=(data.num_train // cfg["batch_size"]) * cfg["epochs"],
        seconds_per_epoch=float(sum(h["epoch_seconds"] for h in history) / max(len(history), 1)),
        config=cfg,
    )
    if cfg["model"] == "transformer":
        metrics.update(completion_baselines(task, data, cfg["seed"]))
    warning = stalled(metrics, initial, cfg, data.num_classes, data.num_test)
    if warning:
        metrics["warning"] = warning
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    try:
        pics = pictures(out, net, task, gradient, data, cfg)
    except Exception as e:  # noqa: BLE001 - matplotlib and the file system raise many kinds
        _report(metrics, gradient)
        raise UsageError(f"cannot write the pictures: {type(e).__name__}: {e}; the run's "
                         f"metrics.json and checkpoint in {out} are kept") from None
    metrics["pictures"] = pics
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    _report(metrics, gradient)
    if warning:
        print(f"hamjax train: warning: {warning}", file=sys.stderr)
    files = [f for f in ("config.json", "metrics.json", "history.csv", "checkpoint.eqx")
             if (out / f).is_file()]
    print(f"run folder: {out} ({', '.join(files + pics)})")


def stalled(metrics: dict, initial: dict, cfg: dict, num_classes: int | None = None,
            num_test: int | None = None) -> str | None:
    """A warning when the run means nothing, whether or not its relaxations converged: a test
    loss that ends far (1.5×) above the untrained model's or non-finite, or a test accuracy
    below chance (``1 / num_classes``) by more than two standard errors of ``num_test``
    guesses (a small test set lands below chance by luck); and, where no test relaxation
    converged, a test loss that did not fall at all. A loss that rose points at the learning
    rate; a flat one at too little training as well."""
    loss, before = metrics.get("test_loss"), initial["loss"]
    if loss is None:
        return None
    if not math.isfinite(loss) or (before > 0 and loss > 1.5 * before):
        return (f"the run went wrong: the test loss rose from {before:.4g} untrained to "
                f"{loss:.4g}; lower --lr (now {cfg['lr']:g})")
    acc = metrics.get("test_accuracy")
    if acc is not None and num_classes and num_test:
        chance = 1.0 / num_classes
        if acc < chance - 2.0 * math.sqrt(chance * (1.0 - chance) / num_test):
            return (f"the run ends below chance: test accuracy {acc:.4f} < 1/{num_classes} "
                    f"(by more than two standard errors over {num_test} test images); lower "
                    f"--lr (now {cfg['lr']:g}) or train longer (--epochs)")
    if metrics.get("test_converged", 1.0) > 0:
        return None
    if math.isfinite(loss) and loss < before * (1 - 1e-3):
        return None
    head = "the run did not learn (no test relaxation converged): "
    if not math.isfinite(loss) or loss > before * (1 + 1e-3):
        return (head + f"the test loss rose from {before:.4g} untrained to {loss:.4g}; lower "
                f"--lr (now {cfg['lr']:g})")
    return (head + f"the test loss stayed at {loss:.4g} ({before:.4g} untrained) after "
            f"{metrics['steps']} steps; train longer (--epochs) or change --lr "
            f"(now {cfg['lr']:g})")


def _report(metrics: dict, gradient) -> None:
    """Print the test metrics a run or an evaluation ended with."""
    if "test_accuracy" in metrics:
        print(f"test accuracy: {metrics['test_accuracy']:.4f}")
    if "test_psnr" in metrics:
        base = (f"; corrupted input {metrics['test_psnr_input']:.2f} dB"
                if "test_psnr_input" in metrics else "")
        print(f"test PSNR: {metrics['test_psnr']:.2f} dB (mse {metrics['test_mse']:.5f}{base})")
    if "test_psnr_nearest" in metrics:
        print(f"baselines on the same masked patches: training mean image "
              f"{metrics['test_psnr_mean_fill']:.2f} dB, nearest of "
              f"{metrics['baseline_reference_images']} training images by the visible patches "
              f"{metrics['test_psnr_nearest']:.2f} dB")
    if "test_converged" in metrics:
        print(f"relaxations converged (residual <= {gradient.tolerance:g}): "
              f"{metrics['test_converged']:.3f}")


# ---------------------------------------------------------------------------------- eval, analyze
def load_run(run_dir: Path, data_dir=None):
    """Rebuild a run's model from the config its checkpoint holds and load the weights:
    ``(config, data, net, task, gradient estimator, checkpoint header)``."""
    import equinox as eqx

    from .. import train as T
    from ..data import DataError

    saved = saved_config(run_dir) if run_dir.is_dir() else None
    if saved is None:  # e.g. a checkpoint written by hamjax.train.fit without a config
        raise UsageError(f"{run_dir} is not a run folder (no config.json)")
    cfg = saved[0]
    if data_dir is not None:
        cfg["data_dir"] = normalised("data_dir", data_dir)
    try:
        data = load_data(cfg)
    except DataError as e:
        raise UsageError(f"{e} (the data folder this run recorded); pass --data-dir DIR"
                         ) from None
    net, task, gradient = build(cfg, data)
    opt = optimizer(cfg, data)
    try:
        net, _, meta = T.load_checkpoint(run_dir / "checkpoint.eqx", net,
                                         opt.init(eqx.filter(net, eqx.is_inexact_array)))
    except T.CheckpointError as e:
        raise UsageError(f"{e}") from None
    return cfg, data, net, task, gradient, meta


def evaluate(args) -> int:
    """``hamjax eval``: the saved run's test metrics, printed and as JSON."""
    from .. import train as T

    cfg, data, net, task, gradient, meta = load_run(args.run_dir, args.data_dir)
    t0 = time.perf_counter()
    res = T.evaluate(net, data.x_test, data.y_test, task, gradient, seed=cfg["seed"])
    res = {f"test_{k}": v for k, v in res.items()}
    print(f"run {args.run_dir} (epoch {int(meta['finished_epoch']) + 1}), evaluated in "
          f"{time.perf_counter() - t0:.1f} s")
    _report(res, gradient)
    print(json.dumps(res, indent=2))
    return 0


def analyze(args) -> int:
    """``hamjax analyze``: relax a few test images to a steady state, then the stability
    report of each (:func:`hamjax.analysis.stability`); a summary printed, the JSON saved, and
    ``landscape.png``: the energy landscape through the first image's steady state."""
    import jax.numpy as jnp
    import numpy as np

    from .. import SteadyState, analysis, relax

    cfg, data, net, task, gradient, meta = load_run(args.run_dir, args.data_dir)
    if args.samples > data.num_test:
        raise UsageError(f"--samples {args.samples} exceeds the {data.num_test} test images of "
                         f"this run; use at most {data.num_test}")
    batch = task.prepare(data.x_test[: args.samples], data.y_test[: args.samples],
                         np.random.default_rng(0), train=False)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    x0 = task.initial_state(net, batch)
    sol = relax(net, x0, clamp=task.clamp, stop=SteadyState(atol=1e-5), max_steps=20000,
                raise_nonfinite=False)
    report, first = [], None
    for i in range(args.samples):
        xi = {n: v[i] for n, v in sol.state.items()}
        rep = analysis.stability(net, xi, clamp=task.clamp)
        first = (xi, rep) if first is None else first
        report.append(_stability_entry(i, sol, rep))
    path = args.run_dir / "stability.json"
    picture = args.run_dir / "landscape.png"
    try:
        write_atomic(path, json.dumps(report, indent=2, ensure_ascii=False))
        plane = landscape_figure(picture, net, task.clamp, *first)
        basins = (memory_basins(args.run_dir, net)
                  if cfg["model"] == "memory" and "memory" in net.synapses else None)
    except OSError as e:
        raise UsageError(f"cannot write {e.filename or args.run_dir}: {e.strerror}") from None
    print(f"run {args.run_dir} (epoch {int(meta['finished_epoch']) + 1}): {args.samples} test "
          f"images relaxed to residual 1e-5, then the Jacobian at the steady state")
    for entry in report:
        print(_stability_line(entry))
    print(f"details: {path}")
    print(f"landscape: {picture} (sample 0: the energy on the plane of {plane})")
    if basins is not None:
        print(basins)
    return 0


BASIN_NOISE = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def memory_basins(run_dir: Path, net, trials: int = 4, shown: int = 64) -> str:
    """The basins of a memory model's learned memories (:func:`hamjax.analysis.basins`): for
    the first ``shown`` memories, the fraction of relaxations from the memory plus Gaussian
    noise of each level in :data:`BASIN_NOISE` that end at the memory's own attractor (root-
    mean-square distance at most 0.02); ``basins.json`` and ``basins.png`` written into the run
    folder. Returns the summary line."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .. import SteadyState, analysis, relax, solvers

    shape = tuple(net.layers["image"].shape)
    xi = jnp.reshape(net.synapses["memory"].memories[:shown], (-1, *shape))

    def retrieve(x, key):
        sol = relax(net, {"image": x.reshape(-1, *shape)}, solver=solvers.FixedPoint(),
                    stop=SteadyState(atol=1e-5), raise_nonfinite=False)
        return sol.state["image"].reshape(x.shape[0], -1)

    def noise(x, level, key):
        return x + level * jax.random.normal(key, x.shape)

    b = analysis.basins(retrieve, jnp.reshape(xi, (xi.shape[0], -1)), BASIN_NOISE,
                        corrupt=noise, trials=trials, key=jax.random.PRNGKey(0), atol=0.02)
    record = {"noise_sigma": list(BASIN_NOISE), "mean": b.mean.tolist(),
              "returned": b.returned.tolist(), "radius": b.radius.tolist(),
              "mean_radius": b.mean_radius, "attractor_error": b.attractor_error.tolist(),
              "trials": trials, "memories": int(xi.shape[0]), "atol": 0.02}
    write_atomic(run_dir / "basins.json", json.dumps(record, indent=2))
    basins_figure(run_dir / "basins.png", b, xi)
    radius = (f"stays at or above one half up to σ = {BASIN_NOISE[-1]:g}"
              if not np.isfinite(b.mean_radius)
              else f"falls below one half at σ = {b.mean_radius:.2f}")
    return (f"basins: {run_dir / 'basins.png'} ({xi.shape[0]} memories; P(return) {radius}; "
            f"memories' own attractors at rms {float(np.median(b.attractor_error)):.3f} from "
            "them, median)")


def _stability_entry(i: int, sol, rep) -> dict:
    """Sample ``i``'s record in stability.json: its relaxation and its stability report."""
    import numpy as np

    dead = {k: int(v) for k, v in rep.n_dead.items()} if hasattr(rep, "n_dead") else {}
    spec = np.asarray(rep.spectrum)
    return {
        "sample": i,
        "converged": bool(sol.converged[i]),
        "residual": float(sol.residual[i]),
        "verdict": {True: "stable", False: "unstable", None: "undecided"}[rep.stable],
        "reason": rep.reason,
        "dead_neurons": dead,
        "restricted_spectrum_max_real": float(np.max(np.real(spec))) if spec.size else None,
        "restricted_spectrum_min_real": float(np.min(np.real(spec))) if spec.size else None,
        "restricted_spectrum_size": int(spec.size),
    }


def _stability_line(e: dict) -> str:
    """One readable line per analysed sample."""
    state = "converged" if e["converged"] else "NOT converged"
    dead = ", ".join(f"{n} {k}" for k, n in e["dead_neurons"].items()) or "none"
    spec = ""
    if e["restricted_spectrum_size"]:
        spec = (f"; {e['restricted_spectrum_size']} eigenvalues, real parts in "
                f"[{e['restricted_spectrum_min_real']:.3g}, "
                f"{e['restricted_spectrum_max_real']:.3g}]")
    return (f"  sample {e['sample']}: {e['verdict']}, {state} (residual {e['residual']:.2g}); "
            f"dead neurons: {dead}{spec}\n    {e['reason']}")


# ---------------------------------------------------------------------------------- bench
def bench(argv) -> int:
    """``hamjax bench``: the benchmarks' own command line (``python -m benchmarks``). Unless
    ``--out`` is given, the results go to a new folder ``hamjax-bench-<time>`` of the current
    directory, never beside the committed results of the source tree."""
    # benchmarks/ lives beside the package in the source tree, not inside the installed package
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        pkg = Path(__file__).resolve().parents[2] / "benchmarks"
        if not (pkg / "__main__.py").is_file():
            print("hamjax bench: error: the benchmarks are not installed with the package; run "
                  "it from a source checkout of hamjax (python -m benchmarks)", file=sys.stderr)
            return 2
        # that one package, by its path: the source tree's other folders stay off sys.path
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "benchmarks", pkg / "__init__.py", submodule_search_locations=[str(pkg)])
        sys.modules["benchmarks"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["benchmarks"])
        from benchmarks.__main__ import main as bench_main
    argv = list(argv)
    if not any(a in ("-h", "--help") or a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", time.strftime("hamjax-bench-%Y%m%d-%H%M%S")]
    return bench_main(argv, prog="hamjax bench")
