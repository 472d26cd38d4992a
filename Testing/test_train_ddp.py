"""DistributedDataParallel through torchrun: two gloo processes on the CPU train one model together."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mednextv2
from mednextv2.bundle import load_bundle
from mednextv2.train.demo import split_scan


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tmp_path, data_dir):
    tissue = data_dir / "mr-brain-tissue"
    dataset, _, _ = split_scan(tmp_path / "data", tissue / "icbm152_2009a_t1.nii.gz",
                               tissue / "icbm152_2009a_tissue.nii.gz", list_heldout=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(mednextv2.__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    output = tmp_path / "model"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "mednextv2", "train", str(dataset), "-o", str(output), "--preset", "v2-tiny", "--epochs", "2",
           "--iterations", "6", "--spacing", "2", "2", "2", "--patch", "32", "32", "32", "--val-cases", "anterior",
           "--device", "cpu", "--progress", "none"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "DDP: rank 0 of 2 on cpu (gloo)" in done.stderr and "DDP: rank 1 of 2 on cpu (gloo)" in done.stderr
    bundle = load_bundle(output)
    training = bundle.spec.provenance.training
    assert training["world_size"] == 2 and training["epochs"] == 2
    with open(tmp_path / "model.training" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    # Rank 0 alone writes; DDP kept the replicas identical, so the saved weights are finite and complete.
    state = bundle.load_state_dicts()[0]
    assert all(bool(torch.isfinite(v).all()) for v in state.values())
    assert not any(k.startswith("module.") for k in state)
