"""`mednextv2 demo`: train a small MedNeXt-v2 on a real MR scan shipped with the package, offline,
then segment held-out anatomy; prints Dice and timings, writes a .seg.nrrd and a PNG overlay."""
from __future__ import annotations

from pathlib import Path

from mednextv2.progress import MODES


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="offline demo: train on a real MR scan, segment held-out anatomy",
                              description=__doc__)
    p.add_argument("-o", "--output", default="mednextv2-demo",
                   help="output folder (default ./mednextv2-demo); when it holds an earlier demo, the next free "
                        "./mednextv2-demo-2, -3, ... is used, and an interrupted demo there is resumed")
    p.add_argument("--minutes", type=float, default=5.0, help="training time budget (default 5)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the network's initial weights and the training patches (default 0)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation when segmenting (off in the demo; up to 8x slower; "
                        "`mednextv2 segment` mirrors by default)")
    p.add_argument("--progress", choices=MODES, default="bar",
                   help="progress as a bar on stderr (default), JSON lines on stdout, or none")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: the cores free now)")
    p.set_defaults(func=run)


def run(args) -> int:
    from mednextv2.train.demo import run_demo

    run_demo(Path(args.output), minutes=args.minutes, device=args.device, progress=args.progress, seed=args.seed,
             tta=args.tta, threads=args.threads)
    return 0
