"""``hamjax``'s entry point: parse, dispatch to a command, and report a usage error as one
line."""

from __future__ import annotations

import sys

from ._commands import analyze, bench, evaluate, train
from ._parser import UsageError, build_parser, given_flags
from ._runs import Terminated, stop_signals_interrupt


def main(argv=None) -> int:
    """Run ``hamjax`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.
    Usage errors exit with status 2 and one line on stderr, as argparse's own do."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        return bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": lambda: train(args, given_flags(argv)),
                "eval": lambda: evaluate(args), "analyze": lambda: analyze(args)}
    try:
        with stop_signals_interrupt():
            return commands[args.command]()
    except UsageError as e:
        # exit status 2 as for argparse's own checks, but one line: the problem, not the usage
        parser.exit(2, f"hamjax {args.command}: error: {e}\n")
    except KeyboardInterrupt as e:
        # outside training (which says how to resume), a stop is one line too
        how = f"stopped by {e.name}" if isinstance(e, Terminated) else "interrupted"
        print(f"\nhamjax {args.command}: {how}", file=sys.stderr)
        return 128 + e.signum if isinstance(e, Terminated) else 130
