"""CPU time of one v2-tiny forward of a batch of 32^3 tiles, this checkout's network vs a commit's, side by side.

The forward the small-patch engine runs (bench_segment_small_patch.py): v2-tiny, one input
channel, GRN parameters of trained scale, a batch of `--batch` 32^3 tiles (sliding_window's
FORWARD_VOXELS = 16 x 32^3), one thread, glibc keeping freed memory as the engine's processes do
(process_memory.py). Each network runs `--repeats` forwards in a fresh child
process (after one warm-up forward), the two alternating for `--rounds` rounds; CPU time
(time.process_time) is less inflated by a busy machine than wall time. Prints the medians, their
ratio and the load average.

    python Testing/benchmarks/bench_forward_small_tiles.py --baseline 6f4607a
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_segment_small_patch import baseline_core  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

CHILD = r'''
import json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from mednextv2.network.config import MedNeXtConfig
from mednextv2.network.model import MedNeXt
from mednextv2.process_memory import keep_freed_memory
keep_freed_memory()  # as the engine's processes do
torch.manual_seed(0)
model = MedNeXt(MedNeXtConfig.preset("v2-tiny", in_channels=1, n_classes=4)).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if "grn" in name:
            torch.nn.init.normal_(p, 0.0, 0.3)
x = torch.randn(int(sys.argv[2]), 1, 32, 32, 32)
seconds = []
with torch.no_grad():
    model(x)
    for _ in range(int(sys.argv[3])):
        t = time.process_time()
        model(x)
        seconds.append(time.process_time() - t)
print(json.dumps(seconds))
'''


def forwards(core: Path, batch: int, repeats: int) -> list:
    out = subprocess.run([sys.executable, "-c", CHILD, str(core), str(batch), str(repeats)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="6f4607a", help="the commit whose network is the baseline")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cores = {"ours": ROOT / "core", args.baseline: baseline_core(args.baseline, Path(tmp))}
        seconds = {name: [] for name in cores}
        for _ in range(args.rounds):
            for name, core in cores.items():
                seconds[name] += forwards(core, args.batch, args.repeats)
    ours = statistics.median(seconds["ours"]) * 1000
    base = statistics.median(seconds[args.baseline]) * 1000
    print(f"v2-tiny, {args.batch} x 32^3 tiles, one thread, CPU ms per forward (median of {len(seconds['ours'])}): "
          f"ours {ours:.1f}, {args.baseline} {base:.1f}, {args.baseline} / ours {base / ours:.2f}x "
          f"({ours / args.batch:.1f} vs {base / args.batch:.1f} ms per tile)")
    print("load average:", " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
