"""How well `--minutes M` is kept by a full-resolution run: v2-tiny on the real MR tissue map at
its native 1 mm, 64^3 patches, validated on the held-out anterior part in windows (a whole-volume
validation would take minutes on a CPU).

    python Testing/benchmarks/bench_train_budget.py [--minutes 3]

Prints the wall time against what the budget allows (max(1.1 M, M + 0.5) minutes) and the share
of the budget used, the epochs and how many were validated, where the learning-rate schedule
ended (progress, last rate against the decayed rate at 90 %), and the last mean Dice. The 1-minute
run at 2 mm is a test (Testing/test_train_budget.py); this one takes ~4 min on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Testing/ for the helpers
from repo_folders import import_like_slicer  # noqa: E402

import_like_slicer()
from budget_training import LR, allowed_s, metrics_rows, train_tissue_map  # noqa: E402
from real_data import data_dir  # noqa: E402

from mednextv2.train.optim import lr_factor  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="the training budget (default 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-budget-") as work:
        result, seconds = train_tissue_map(Path(work), data_dir(), args.minutes, None, (64, 64, 64))
        rows = metrics_rows(result.bundle)
    budget_s = args.minutes * 60
    last = rows[-1]
    validated = [r for r in rows if r["mean_dice"]]
    print(f"budget {args.minutes:g} min, 1 mm, patch 64^3, v2-tiny, CPU")
    print(f"wall time       {seconds:.0f} s (allowed {allowed_s(args.minutes):.0f} s; "
          f"{100 * seconds / budget_s:.0f} % of the budget)")
    print(f"epochs          {len(rows)}, {len(validated)} validated")
    print(f"schedule        progress {float(last['progress']):.3f}, last lr {float(last['lr']):.2e} "
          f"(decayed rate at 90 %: {LR * lr_factor(0.9):.2e})")
    print(f"last mean Dice  {last['mean_dice'] or 'not validated'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
