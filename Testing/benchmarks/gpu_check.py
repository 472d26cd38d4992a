"""The GPU path in one run: CUDA tests are run by gpu_check.sh; this part times

- v2-base forward, 128^3, batch 2, bf16 autocast (ms per forward and per patch; against the plain code);
- one training step at that size with and without activation checkpointing (ms, peak GiB);
- whole-CT segmentation (lung1, 512x512x48) with a v2-base bundle of random weights, TTA off and on
  (seconds, peak GiB);

and writes everything to one JSON file. Without CUDA it stops at once with exit code 2.

    python Testing/benchmarks/gpu_check.py OUT.json
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "Testing"))
from real_data import data_dir  # noqa: E402

DATA = data_dir()  # MEDNEXTV2_DATA, ../shared/data, else the per-user cache (built once)


def segment_ct(repeats: int = 1) -> list:
    import torch

    from mednextv2.bundle import Bundle
    from mednextv2.inference.pipeline import Segmenter
    from mednextv2.network import MedNeXt, MedNeXtConfig
    from segment_fixtures import bundle_spec

    image = DATA / "ct-lung" / "lung1_image.nrrd"
    if not image.is_file():
        raise SystemExit(f"gpu_check: {image} not found in the real data folder {DATA}")
    config = MedNeXtConfig.preset("v2-base", in_channels=1, n_classes=3, deep_supervision=False)
    spec = bundle_spec(config, patch=(64, 128, 128), target_spacing=(2.5, 0.8, 0.8), mirror_axes=(0, 1, 2))
    bundle = Bundle.create(spec, [MedNeXt(config).state_dict()])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tta in (False, True):
            segmenter = Segmenter(bundle, device="cuda", tta=tta)
            torch.cuda.reset_peak_memory_stats()
            times = []
            for i in range(repeats):
                start = time.perf_counter()
                segmenter.segment_to_file(str(image), Path(tmp) / f"out{i}.seg.nrrd")
                times.append(time.perf_counter() - start)
            row = {"case": f"segment lung1 v2-base tta={tta}", "seconds": round(min(times), 2),
                   "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("gpu_check.json")
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda or 'none'}); nothing measured", file=sys.stderr)
        return 2
    from bench_network import network_cuda

    summary = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(),
               "host": platform.node(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    summary["network"] = network_cuda(repeats=5)  # forward ms, train step with/without checkpointing, peaks
    summary["segment"] = segment_ct()
    summary["peak_gib"] = max([r.get("peak_gib", 0) for r in summary["network"] + summary["segment"]])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(f"gpu_check: summary written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
