"""What asking for the uncertainty map costs in the finishing step (network grid -> input grid).

    python Testing/benchmarks/bench_uncertainty_cost.py [--classes 3 14] [--repeats 3] [--threads 1]

Random float16 logits on a network grid of 80 x 192 x 192 go back to an input grid of twice that
size per axis (as a 1.5 mm model on a 0.75 mm scan): `to_input_grid` (labels only) and
`to_input_grid_with_uncertainty` (labels and map) take turns, so background load hits both alike.
Prints the median wall and CPU time of each and their ratio (the map itself adds 4 bytes per
input voxel of memory). No network runs: the map needs no network pass, so this is all it adds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from mednextv2.inference import finishing, preprocessing


def _record(net_shape, out_shape) -> preprocessing.GridRecord:
    return preprocessing.GridRecord(out_shape, (0, 1, 2), (False, False, False), (0.75,) * 3,
                                    tuple((0, n) for n in out_shape), (1.5,) * 3, net_shape, None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[3, 14])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net_shape, out_shape = (80, 192, 192), (160, 384, 384)
    print(f"network grid {net_shape} -> input grid {out_shape}, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.2f}")
    for k in args.classes:
        scores = torch.randn((k,) + net_shape, generator=torch.Generator().manual_seed(0)).to(torch.float16)
        record = _record(net_shape, out_shape)
        times = {"labels": [], "labels+map": []}
        cpu = {"labels": [], "labels+map": []}
        for _ in range(args.repeats):
            for name, run in (("labels", lambda: finishing.to_input_grid(scores, record)),
                              ("labels+map", lambda: preprocessing.to_input_grid_with_uncertainty(scores, record))):
                t0, c0 = time.perf_counter(), time.process_time()
                run()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        wall = {n: statistics.median(v) for n, v in times.items()}
        cpu_s = {n: statistics.median(v) for n, v in cpu.items()}
        print(f"K={k:>2}: labels {wall['labels']:.2f} s (CPU {cpu_s['labels']:.2f} s), labels+map "
              f"{wall['labels+map']:.2f} s (CPU {cpu_s['labels+map']:.2f} s); ratio wall "
              f"{wall['labels+map'] / wall['labels']:.2f}, CPU {cpu_s['labels+map'] / cpu_s['labels']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
