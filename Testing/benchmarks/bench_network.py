"""Network speed: ours against a plain literal implementation of the spec, same weights and input.

    python Testing/benchmarks/bench_network.py [--sizes 64 128] [--repeats 3] [--json out.json]
    python Testing/benchmarks/bench_network.py --under-load [--sizes 64 128] [--repeats 2]
    python Testing/benchmarks/bench_network.py --chunks 1024 4096 16384 [--sizes 64] [--repeats 3]

The whole-network rows run each implementation in a child process of its own, set up as it
runs for real: ours as an engine process (the engine's thread policy and memory setting,
mednextv2.threads and mednextv2.process_memory), the plain code as its users would run it (torch's
defaults). The two take turns, one forward each, so background load hits both alike. It prints
medians, the speed-up ratio, the largest output difference, each one's largest error against the
plain code run in float64 (GRN gamma/beta from N(0, 0.3), as trained), and one-time costs (first call)
apart, and, for context, the plain code given the engine's memory setting too. The op-by-op rows
(each trick at the first stage's shape) and --chunks run in this process. On CUDA it also times
v2-base at 128^3, batch 2, under bf16 autocast, and one training step with and without
activation checkpointing.

`--under-load` runs the network comparison four times: idle, then beside each competitor this
script starts itself in a child process (a 1-thread and a 2-thread torch process doing matmuls,
and a second engine: our forward in a loop, set up as an engine process); every row also times
the plain code with the engine's memory setting, so both baselines stand side by side. Time: about
(2 + 2 * repeats) forwards of each implementation per row (plus one of each for the output
check); on an idle 2-core machine with --repeats 2, about 4 min at 64^3 and 20-25 min at
128^3 (the plain code takes 42 s per 128^3 forward idle, 2-3x that beside a competitor).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Testing/ for plain_mednext
from plain_mednext import PlainMedNeXt  # noqa: E402

from mednextv2.network import MedNeXt, MedNeXtConfig  # noqa: E402
from mednextv2.network import cpu_fast_path  # noqa: E402
from mednextv2.network.layers import MedNeXtBlock  # noqa: E402
from mednextv2.process_memory import keep_freed_memory  # noqa: E402
from mednextv2.threads import FIRST_SAMPLE_S, CoreWatch, ThreadPolicy, threads_for  # noqa: E402

COMPETITORS = {  # name -> arguments of this script's --competitor child
    "matmul 1 thread": ["matmul", "1"],
    "matmul 2 threads": ["matmul", "2"],
    "second engine": ["engine", "0"],
}


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # GRN gamma/beta start at zero; random values make the GRN path count in the comparison.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(1, p[0].numel()) ** 0.5))
    return model


def timed(fn, sync=lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def compare(label, plain_fn, ours_fn, repeats, sync=lambda: None):
    return summarize(label, lambda: timed(plain_fn, sync), lambda: timed(ours_fn, sync), repeats)


def summarize(label, time_plain, time_ours, repeats):
    """Alternate the two timers (each returns the seconds of one call); medians, first calls apart."""
    first = {"plain": time_plain(), "ours": time_ours()}
    times = {"plain": [], "ours": []}
    for _ in range(repeats):
        times["plain"].append(time_plain())
        times["ours"].append(time_ours())
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"case": label, "plain_s": med["plain"], "ours_s": med["ours"], "ratio": med["plain"] / med["ours"],
           "first_call_plain_s": first["plain"], "first_call_ours_s": first["ours"]}
    print(f"{label:42s} plain {med['plain'] * 1e3:9.1f} ms   ours {med['ours'] * 1e3:9.1f} ms   "
          f"ratio {row['ratio']:5.2f}x   (first call: plain {first['plain']:.2f} s, ours {first['ours']:.2f} s)", flush=True)
    return row


def with_trained_grn_scale(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """GRN gamma/beta drawn from N(0, 0.3), the size of a trained network's: the scale at which
    GRN magnifies a float32 error, so the float64 column below means something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "grn_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def v2_base_pair(size: int):
    """Ours and the plain implementation of v2-base with the same random weights, and a size^3 input."""
    cfg = MedNeXtConfig.preset("v2-base", in_channels=1, n_classes=3, deep_supervision=False)
    ours = with_trained_grn_scale(randomised(MedNeXt(cfg))).eval()
    plain = PlainMedNeXt(cfg).eval()
    plain.load_state_dict(ours.state_dict())
    return ours, plain, torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(1))


def serve_forwards(impl: str, size: int) -> None:
    """The --worker child: one implementation in a process of its own, set up as it runs for real.

    "ours": an engine process (mednextv2.process_memory, the engine's thread policy); "plain" and
    "plain-kept-memory": torch's defaults, the latter with the engine's memory setting too (to
    show what that setting alone is worth). One command per stdin line: "run" answers the seconds
    of one forward and the thread count; "save PATH" writes the output; end of input ends it.
    """
    ours, plain, x = v2_base_pair(size)
    if impl in ("ours", "plain-kept-memory"):
        keep_freed_memory()
    net = ours if impl == "ours" else plain
    if impl == "float64":  # the exact reference: the plain code in float64
        net, x = plain.double(), x.double()
    with torch.inference_mode():
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "run":
                threads = engine_threads_now() if impl == "ours" else torch.get_num_threads()
                print(f"{timed(lambda: net(x)):.6f} {threads}", flush=True)
            elif command == "save":
                torch.save(net(x), arg)
                print("saved", flush=True)


def engine_threads_now() -> int:
    """The engine's thread rule (threads.threads_for) applied to the machine as it is now.

    ThreadPolicy would judge from the time since its last look, which here includes the other
    worker's turn: a load that an engine running alone never sees beside it."""
    watch = CoreWatch()
    time.sleep(FIRST_SAMPLE_S)
    n = threads_for(watch.free_cores(), ThreadPolicy().cores)
    torch.set_num_threads(n)
    return n


class ForwardWorker:
    """The parent's handle on a serve_forwards child; `threads` collects the counts it reported."""

    def __init__(self, impl: str, size: int) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", impl, str(size)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.threads: List[int] = []

    def _ask(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError(f"forward worker {self.proc.args[3:]} died (exit {self.proc.wait()})")
        return answer

    def forward(self) -> float:
        seconds, threads = self._ask("run").split()
        self.threads.append(int(threads))
        return float(seconds)

    def output(self, folder: Path) -> torch.Tensor:
        path = folder / f"{self.proc.pid}.pt"
        self._ask(f"save {path}")
        return torch.load(path, weights_only=True)

    def close(self) -> None:
        self.proc.stdin.close()  # its command loop ends
        self.proc.wait()


@contextmanager
def forward_workers(size: int, *impls: str):
    workers = [ForwardWorker(impl, size) for impl in impls]
    try:
        yield workers
    finally:
        for w in workers:
            w.close()


def max_difference(a: ForwardWorker, b: ForwardWorker) -> float:
    with tempfile.TemporaryDirectory() as folder:
        return (a.output(Path(folder)) - b.output(Path(folder))).abs().max().item()


def float64_error(size: int, outputs: List[torch.Tensor]) -> List[float]:
    """The largest difference of each output from the plain code run in float64 (in a worker of
    its own, started after the timed ones have ended: at 128^3 it needs several GiB)."""
    with forward_workers(size, "float64") as (exact,), tempfile.TemporaryDirectory() as folder:
        reference = exact.output(Path(folder))
    return [(out.double() - reference).abs().max().item() for out in outputs]


def network_cpu(size: int, repeats: int):
    """Ours in an engine process against the plain code in a default one, taking turns."""
    with forward_workers(size, "plain", "ours", "plain-kept-memory") as (plain, ours, plain_kept):
        with tempfile.TemporaryDirectory() as folder:
            outputs = [ours.output(Path(folder)), plain.output(Path(folder))]
        diff = (outputs[0] - outputs[1]).abs().max().item()
        row = summarize(f"v2-base forward {size}^3 fp32 CPU", plain.forward, ours.forward, repeats)
        kept = statistics.median(plain_kept.forward() for _ in range(repeats + 1))
    error_ours, error_plain = float64_error(size, outputs)
    row.update(max_abs_diff=diff, plain_kept_memory_s=kept, float64_error_ours=error_ours,
               float64_error_plain=error_plain)
    print(f"{'':42s} max |ours - plain| = {diff:.2e}; the plain code with the engine's memory setting: "
          f"{kept * 1e3:.1f} ms ({kept / row['ours_s']:.2f}x ours)")
    print(f"{'':42s} max error vs float64 (GRN gamma/beta ~ N(0, 0.3)): ours {error_ours:.2e}, "
          f"plain float32 {error_plain:.2e} ({error_ours / error_plain:.2f}x)", flush=True)
    return row


def run_competitor(kind: str, threads: int) -> None:
    """The load beside the measurement, until killed: torch matmuls, or our forward in a loop."""
    if kind == "matmul":
        torch.set_num_threads(threads)
        a = torch.randn(1024, 1024)
        while True:
            a @ a
    net = randomised(MedNeXt(MedNeXtConfig.preset("v2-base", in_channels=1, n_classes=3))).eval()
    x = torch.randn(1, 1, 64, 64, 64)
    policy = ThreadPolicy()  # what a second `mednextv2 segment` does: follow the free cores
    keep_freed_memory()
    with torch.inference_mode():
        while True:
            policy.update()
            net(x)


@contextmanager
def competing(child: Optional[List[str]]):
    """A competitor (this script's --competitor arguments) running for the duration; None: nothing."""
    if not child:
        yield
        return
    proc = subprocess.Popen([sys.executable, __file__, "--competitor", *child])
    time.sleep(3)  # let it start and import torch
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def under_load(sizes, repeats: int):
    """ours (an engine process) vs plain (a default process), idle and beside each competitor."""
    rows = []
    for size in sizes:
        with forward_workers(size, "plain", "ours", "plain-kept-memory") as (plain, ours, plain_kept):
            diff = max_difference(ours, plain)
            print(f"v2-base {size}^3: max |ours - plain| = {diff:.2e}", flush=True)
            for name, child in [("idle", None)] + list(COMPETITORS.items()):
                with competing(child):
                    ours.threads.clear()
                    plain.threads.clear()
                    row = summarize(f"{size}^3 beside {name}", plain.forward, ours.forward, repeats)
                    # The plain code with the engine's memory setting, in the same turns: its time
                    # without the page faults, so that no one reads the ratio as network code alone.
                    kept = statistics.median(plain_kept.forward() for _ in range(repeats + 1))
                row.update(size=size, load=name, max_abs_diff=diff, ours_threads=sorted(set(ours.threads)),
                           plain_threads=sorted(set(plain.threads)), plain_kept_memory_s=kept,
                           ratio_kept_memory=kept / row["ours_s"])
                print(f"{'':42s} ours ran with {row['ours_threads']} thread(s), plain with {row['plain_threads']}; "
                      f"plain with the engine's memory setting {kept:.2f} s ({row['ratio_kept_memory']:.2f}x ours)",
                      flush=True)
                rows.append(row)
    print("\n| size | beside | plain s (as its users run it) | plain s (engine's memory setting) | ours s "
          "| ratio | ratio (memory setting) | ours threads |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}^3 | {r['load']} | {r['plain_s']:.2f} | {r['plain_kept_memory_s']:.2f} "
              f"| {r['ours_s']:.2f} "
              f"| {r['ratio']:.2f}x | {r['ratio_kept_memory']:.2f}x | {r['ours_threads']} |")
    return rows


def chunk_sizes(sizes, chunks, repeats: int):
    """Our forward with each cpu_fast_path.CHUNK_VOXELS in turn (the cache-blocking knob), and the plain code,
    alternating in one process: what this host's caches favour."""
    rows = []
    for size in sizes:
        ours, plain, x = v2_base_pair(size)
        default, times = cpu_fast_path.CHUNK_VOXELS, {c: [] for c in ["plain", *chunks]}
        try:
            with torch.inference_mode():
                for _ in range(repeats + 1):  # the first round warms up and is dropped
                    for c in chunks:
                        cpu_fast_path.CHUNK_VOXELS = c
                        times[c].append(timed(lambda: ours(x)))
                    times["plain"].append(timed(lambda: plain(x)))
        finally:
            cpu_fast_path.CHUNK_VOXELS = default
        plain_s = statistics.median(times["plain"][1:])
        for c in chunks:
            ours_s = statistics.median(times[c][1:])
            rows.append({"size": size, "chunk_voxels": c, "plain_s": plain_s, "ours_s": ours_s, "ratio": plain_s / ours_s})
            print(f"{size}^3 chunk {c:6d} voxels{' (default)' if c == default else '':10s} ours {ours_s:6.3f} s   "
                  f"plain {plain_s:6.3f} s   ratio {plain_s / ours_s:5.2f}x", flush=True)
    return rows


def with_fusion(enabled: bool, net: torch.nn.Module, x: torch.Tensor):
    saved = cpu_fast_path.fused_available
    cpu_fast_path.fused_available = lambda: enabled
    try:
        return net(x)
    finally:
        cpu_fast_path.fused_available = saved


def one_gemv_squares(x: torch.Tensor) -> torch.Tensor:
    """Column sums of squares as one float32 GEMV per chunk: fast, but 1e-5 off over 16k rows."""
    total = torch.zeros(x.shape[1])
    for s in range(0, x.shape[0], cpu_fast_path.CHUNK_VOXELS):
        part = x[s:s + cpu_fast_path.CHUNK_VOXELS]
        total.addmv_(torch.mul(part, part).t(), torch.ones(part.shape[0]))
    return total


def column_squares(x: torch.Tensor) -> torch.Tensor:
    squares = cpu_fast_path.ColumnSquares(*x.shape)
    for s in range(0, x.shape[0], cpu_fast_path.CHUNK_VOXELS):
        squares.add(x[s:s + cpu_fast_path.CHUNK_VOXELS])
    return squares.total


def ops_cpu(repeats: int):
    """Each trick alone, at enc_block_0's shape of v2-base on a 64^3 patch (32 channels, r=3)."""
    c, s, r = 32, 64, 3
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, c, s, s, s, generator=g)
    xl = x.contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(c, 1, 3, 3, 3, generator=g)
    block = randomised(MedNeXtBlock(c, c, r, 3, grn=True)).eval()
    plain_block = PlainMedNeXt(MedNeXtConfig.preset("v2-base")).enc_block_0[0].eval()
    plain_block.load_state_dict(block.state_dict())
    rows = []
    with torch.inference_mode():
        rows.append(compare("op: depthwise 3^3 conv, channels_last_3d", lambda: F.conv3d(x, w, padding=1, groups=c),
                            lambda: F.conv3d(xl, w, padding=1, groups=c), repeats))
        up = randomised(MedNeXtBlock(2 * c, c, r, 3, grn=True, resample="up")).eval()
        xs = torch.randn(1, 2 * c, s // 2, s // 2, s // 2, generator=g).contiguous(memory_format=torch.channels_last_3d)
        rows.append(compare("op: up depthwise, ConvTranspose3d vs polyphase", lambda: up.conv1(xs),
                            lambda: cpu_fast_path.depthwise(up, xs), repeats))
        rows.append(compare("op: up residual, ConvTranspose3d vs strided", lambda: up.res_conv(xs),
                            lambda: cpu_fast_path.upsample_residual(up, xs), repeats))
        # mlp_into adds into its second argument; a scratch copy keeps xl itself unchanged.
        acc = xl.clone(memory_format=torch.channels_last_3d)
        unfused = partial(cpu_fast_path.mlp_into, block, fused=False)
        rows.append(compare("op: norm+expand+GELU+GRN+compress, chunked", lambda: block._compress(block.act(block.conv2(xl))),
                            lambda: unfused(xl, acc), repeats))
        rows.append(compare("op: whole block (plain vs ours)", lambda: plain_block(x), lambda: block(xl), repeats))
        wide = block.act(block.conv2(xl)).permute(0, 2, 3, 4, 1).reshape(-1, r * c)  # GRN's input, (voxels, r*C)
        rows.append(compare("op: GRN's sums of squares, one GEMV vs blocked", lambda: one_gemv_squares(wide),
                            lambda: column_squares(wide), repeats))
        # Alone in one block the fusion hardly shows (1.04x); across the network it does.
        net = randomised(MedNeXt(MedNeXtConfig.preset("v2-base", in_channels=1, n_classes=3))).eval()
        patch = torch.randn(1, 1, s, s, s, generator=g)
        rows.append(compare(f"op: chunk GEMMs addmm vs oneDNN fused, net {s}^3", lambda: with_fusion(False, net, patch),
                            lambda: with_fusion(True, net, patch), repeats))
    return rows


def network_cuda(repeats: int):
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    cfg = MedNeXtConfig.preset("v2-base", in_channels=1, n_classes=3, deep_supervision=False)
    ours = randomised(MedNeXt(cfg)).to(dev).eval()
    plain = PlainMedNeXt(cfg).to(dev).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 1, 128, 128, 128, device=dev)
    rows = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        row = compare("v2-base fwd 128^3 b2 bf16 CUDA", lambda: plain(x), lambda: ours(x), repeats, sync)
        row["ms_per_patch_ours"] = row["ours_s"] / 2 * 1e3
        row["ms_per_patch_plain"] = row["plain_s"] / 2 * 1e3
        rows.append(row)
    ours.train()
    ours.set_deep_supervision(True)
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-4, eps=1e-4)
    for stages in (False, True):
        ours.set_checkpointing(stages)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = sum(o.float().mean() for o in ours(x))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        step()
        torch.cuda.reset_peak_memory_stats()
        t = statistics.median(timed(step, sync) for _ in range(repeats))
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
        print(f"train step 128^3 b2 bf16, checkpointing={stages}: {t * 1e3:.0f} ms, peak {peak:.1f} GiB", flush=True)
        rows.append({"case": f"train step checkpointing={stages}", "ms": t * 1e3, "peak_gib": peak})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ops", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--under-load", action="store_true", help="idle and beside each competitor (see above)")
    parser.add_argument("--chunks", type=int, nargs="+", help="compare these CHUNK_VOXELS values (see chunk_sizes)")
    parser.add_argument("--competitor", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve_forwards(args.worker[0], int(args.worker[1]))
        return
    if args.competitor:
        run_competitor(args.competitor[0], int(args.competitor[1]))
        return
    if args.chunks:
        rows = chunk_sizes(args.sizes, args.chunks, args.repeats)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    if args.under_load:
        rows = under_load(args.sizes, args.repeats)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    rows = [] if args.no_ops else ops_cpu(args.repeats)
    rows += [network_cpu(size, args.repeats) for size in args.sizes]
    if torch.cuda.is_available():
        print(f"CUDA device: {torch.cuda.get_device_name()}")
        rows += network_cuda(args.repeats)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
