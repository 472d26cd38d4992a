"""The engine process keeps the memory it frees (mednextv2.process_memory), and only the engine does."""
import json
import subprocess
import sys
from pathlib import Path

import mednextv2.cli as cli

CORE = Path(__file__).resolve().parents[1] / "core"

# v2-tiny forwards at 128^3 (its first stage's tensors are 64 MiB, above glibc's default mmap
# threshold): the page faults of the last forward, and the resident memory after each.
FORWARDS = """
import json, resource
import torch
import mednextv2, mednextv2.network  # importing the library must leave the allocator alone
from mednextv2.network import MedNeXt, MedNeXtConfig
from mednextv2.process_memory import keep_freed_memory

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))

torch.set_num_threads(1)
net = MedNeXt(MedNeXtConfig.preset("v2-tiny", in_channels=1, n_classes=2)).eval()
x = torch.randn(1, 1, 128, 128, 128)

def forwards(n=4):
    rss = []
    with torch.inference_mode():
        for _ in range(n):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            net(x)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            rss.append(rss_mib())
    return faults, rss

default_faults, _ = forwards()
applied = keep_freed_memory()
kept_faults, kept_rss = forwards(6)
print(json.dumps({"default": default_faults, "applied": applied, "kept": kept_faults, "kept_rss": kept_rss}))
"""


def test_an_engine_process_reuses_freed_memory_and_does_not_grow():
    out = subprocess.run([sys.executable, "-c", FORWARDS], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(CORE), "PATH": ""})
    result = json.loads(out.stdout)
    if not sys.platform.startswith("linux"):
        assert result["applied"] is False  # no glibc: nothing changes
        return
    assert result["applied"] is True
    # By default (also after importing mednextv2) each forward maps and zeroes its large tensors'
    # pages again: 64 MiB alone is 16384 pages of 4 KiB.
    assert result["default"] > 16384, result
    assert result["kept"] < result["default"] / 20, result
    # Kept memory is reused, not added to: resident memory settles after the first forwards.
    rss = result["kept_rss"]
    assert max(rss[2:]) - min(rss[2:]) < 32, result


def test_the_engine_command_sets_it(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True) or True)
    assert cli.main(["models", "--progress", "none", "import", "/nonexistent/model-folder"]) == 2
    assert calls == [True]
    assert "model-folder" in capsys.readouterr().err
