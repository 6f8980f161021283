"""``hamjax``'s entry point: parse, dispatch to a command, and report a usage error as one
line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ._commands import analyze, bench, evaluate, train
from ._parser import UsageError, build_parser, defaults, given_flags
from ._runs import Terminated, stop_for_lost_peer, stop_signals_interrupt


def train_config(argv) -> dict:
    """The config ``hamjax train *argv`` runs with (as its config.json records it): the
    command line's own parser and defaults. Raises :class:`UsageError` where
    the command would refuse the flags, with the message it would print; argparse's own
    refusals (an unknown flag, a bad value) exit as they do on the command line."""
    from ._runs import config_of

    return defaults(config_of(build_parser().parse_args(["train", *argv])))


def main(argv=None) -> int:
    """Run ``hamjax`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.
    Usage errors exit with status 2 and one line on stderr, as argparse's own do."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    _persistent_compilation_cache()
    commands = {"train": lambda: train(args, given_flags(argv)),
                "eval": lambda: evaluate(args), "analyze": lambda: analyze(args)}
    try:
        with stop_signals_interrupt():
            return commands[args.command]()
    except UsageError as e:
        # exit status 2 as for argparse's own checks, but one line: the problem, not the usage
        parser.exit(2, f"hamjax {args.command}: error: {e}\n")
    except Exception as e:
        # outside training (which says what it kept), a process of a run whose peer has gone
        # is one line too, and ends at once rather than in JAX's shutdown
        if "jax" in sys.modules:
            from ..sharding import lost_peer

            peer = lost_peer(e)
            if peer is not None:
                stop_for_lost_peer(args.command, peer)
        raise
    except KeyboardInterrupt as e:
        # outside training (which says how to resume), a stop is one line too
        how = f"stopped by {e.name}" if isinstance(e, Terminated) else "interrupted"
        print(f"\nhamjax {args.command}: {how}", file=sys.stderr)
        return 128 + e.signum if isinstance(e, Terminated) else 130


def _persistent_compilation_cache() -> None:
    """Keep the programs a command compiles on disk (JAX's persistent compilation cache), so
    that the next run of the same model starts without compiling them again. The folder:
    ``$HAMJAX_COMPILATION_CACHE`` (``off`` for none), else ``$XDG_CACHE_HOME/hamjax/jax``
    (``~/.cache/hamjax/jax``); a folder set for JAX itself (``JAX_COMPILATION_CACHE_DIR``) is
    left as it is. Programs that compile in under half a second are not kept. A folder that
    cannot be written is said in one line, and the run goes on without it."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    where = os.environ.get("HAMJAX_COMPILATION_CACHE")
    if where is None:
        home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        where = str(Path(home) / "hamjax" / "jax")
    if where.lower() in ("off", ""):
        return
    try:
        Path(where).mkdir(parents=True, exist_ok=True)
        usable = os.access(where, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    if not usable:
        # JAX would warn at every program it fails to keep: say it once and go on without
        print(f"hamjax: compiled programs are not kept: cannot write {where} (set "
              "HAMJAX_COMPILATION_CACHE to a folder of yours, or to off)", file=sys.stderr)
        return
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
