"""`mednextv2` command line: one module per subcommand, each with `add_parser` and `run`.

Exit codes (documented in the README): 0 success, 1 unexpected error, 2 bad input,
3 out of resources, 130 cancelled (SIGINT or SIGTERM).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import List, Optional

from mednextv2 import __version__
from mednextv2.errors import Cancelled, MedNeXtError
from mednextv2.output_streams import tolerate_lost_reader
from mednextv2.process_memory import keep_freed_memory
from mednextv2.progress import BarSafeLogHandler

# name -> module under mednextv2.cli; each defines add_parser(subparsers) and run(args) -> int
COMMANDS = ("segment", "models", "train", "demo")


def _raise_cancelled(signum, frame):
    raise Cancelled(f"cancelled by signal {signal.Signals(signum).name}")


def _rank_label() -> str:
    """Under torchrun the ranks share one terminal: each line they log or print names its rank."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return ""  # not under torchrun: torch need not load for this
    from mednextv2.ranks import from_environment

    ctx = from_environment()
    return f"[rank {ctx.rank}/{ctx.world_size}] "


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mednextv2", description="MedNeXt-v2 segmentation and fine-tuning for CT and MR.")
    parser.add_argument("--version", action="version", version=f"mednextv2 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mednextv2.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"mednextv2.cli.{name}":
                continue  # subcommand not part of this build
            raise
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    label = _rank_label()
    tolerate_lost_reader()  # Slicer may exit while training: the stop file, not a dead pipe, ends the run
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=label + "%(levelname)s %(name)s: %(message)s",
                        handlers=[BarSafeLogHandler(sys.stderr)])
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    keep_freed_memory()  # this process is an engine: reuse freed tensors' pages (process_memory.py)
    # SIGTERM (Slicer's Cancel, a scheduler) must unwind like Ctrl-C so temp files are removed.
    signal.signal(signal.SIGTERM, _raise_cancelled)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{label}mednextv2: cancelled", file=sys.stderr)
        return Cancelled.exit_code
    except MedNeXtError as e:
        print(f"{label}mednextv2: error: {e}", file=sys.stderr)
        return e.exit_code
