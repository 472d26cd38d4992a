"""The engine's model list, read by waiting for a `mednextv2 models list --json` run: for tests
only. The panels never wait on a process; the engine client reads the list in the background
(`EngineClient.modelList.load()`)."""
from typing import List, Mapping, Optional

from MedNeXtV2SegmentLib.command import build_models_command
from MedNeXtV2SegmentLib.models import ModelChoice, read_model_list
from MedNeXtV2SegmentLib.engine_client import ProcessFactory, engine_process


def list_models(python: str, env: Mapping[str, str], process_factory: Optional[ProcessFactory] = None) -> List[ModelChoice]:
    process = (process_factory or engine_process)(build_models_command(python, "list", "--json"), env, None).start()
    process.wait()
    lines = process.poll()
    return read_model_list(process.returncode, "\n".join(l.text for l in lines if l.stream == "stdout"),
                           "\n".join(process.stderr_tail))
