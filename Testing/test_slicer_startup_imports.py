"""What Slicer loads when it starts: the module files must not pull in SimpleITK, sitkUtils or
torch (seconds of start-up for every Slicer user), and core packages the panels import stay torch-free.

Slicer imports every module file at start-up. Here each file is imported in a fresh interpreter
with the real `slicer` package (slicer-core); `slicer.ScriptedLoadableModule`, which slicer-core
lacks, is the only piece put in by hand.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from repo_folders import CORE_DIR, REPO

PROBE = """
import json, sys, types
sys.path[:0] = {paths!r}
import slicer
sls = types.ModuleType("slicer.ScriptedLoadableModule")
for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
             "ScriptedLoadableModuleTest"):
    setattr(sls, name, type(name, (), {{}}))
sys.modules["slicer.ScriptedLoadableModule"] = sls
slicer.ScriptedLoadableModule = sls
before = set(sys.modules)
import {module}
{extra}
print(json.dumps(sorted(m for m in ("SimpleITK", "sitkUtils", "torch") if m in sys.modules and m not in before)))
"""


@pytest.mark.parametrize("module, extra", [
    ("MedNeXtV2Segment", ""),
    ("MedNeXtV2Train", ""),
    ("MedNeXtV2Train", "import mednextv2.train, mednextv2.train.datasets"),  # browsing a dataset folder
    # The wizard's architectures and settings checks: the network's presets and the engine's TrainOptions.
    ("MedNeXtV2Train", "import MedNeXtV2TrainLib.settings, mednextv2.network, mednextv2.train.options"),
])
def test_module_files_load_without_simpleitk_or_torch(module, extra):
    assert importlib.util.find_spec("torch") is not None, "without torch installed this test proves nothing"
    paths = [str(REPO / "MedNeXtV2Segment"), str(REPO / "MedNeXtV2Train"), str(CORE_DIR)]
    out = subprocess.run([sys.executable, "-c", PROBE.format(paths=paths, module=module, extra=extra)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {module} at Slicer start loads {loaded}"
