"""The model selector reads the engine's real `mednextv2 models list --json`."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from MedNeXtV2SegmentLib.command import build_models_command, engine_environment
from engine_model_list import list_models
from MedNeXtV2SegmentLib.models import (CatalogError, ModelChoice, describe_model,
                                        model_choice, parse_model_list, time_hint)
from MedNeXtV2SegmentLib.process import EngineProcess
from MedNeXtV2SegmentLib.tinybundle import make_tiny_bundle


@pytest.fixture(scope="module")
def engine_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    return engine_environment({"PATH": "/usr/bin:/bin", "MEDNEXTV2_HOME": str(home)})


def test_import_then_list_through_the_real_cli(tmp_path, engine_env):
    bundle = make_tiny_bundle(tmp_path, "tiny-import")
    # The panel's import runs through the same process runner as a segmentation.
    process = EngineProcess(build_models_command(sys.executable, "import", str(bundle)), env=engine_env).start()
    assert process.wait(timeout=120) == 0, "\n".join(process.stderr_tail)
    choices = {c.id: c for c in list_models(sys.executable, engine_env)}
    choice = choices["tiny-import"]
    assert choice.downloaded and choice.path
    assert choice.labels == ("lesion", "tissue") and choice.modality == "CT"
    assert choice.title == "Self-test tiny model"
    assert describe_model(choice).endswith("downloaded")


def test_list_failure_carries_the_engine_message(engine_env):
    failing = [sys.executable, "-c", "import sys; print('mednextv2: error: catalog broken', file=sys.stderr); sys.exit(2)"]
    with pytest.raises(CatalogError, match="catalog broken"):
        list_models("py", engine_env, process_factory=lambda args, env, cwd: EngineProcess(failing, env=env, cwd=cwd))


LISTING = ('import json, time; time.sleep(0.5); '
           'print(json.dumps([{"id": "lung", "title": "Lung (CT)", "installed": "no", "modality": "CT"}]))')


def test_the_panels_list_models_without_blocking_and_share_one_cache(engine_env, monkeypatch, forget_new_modules):
    """Module entry never waits for `models list` on the GUI thread: the engine client both logics
    share reads it in the background (its timer polls), and the list is cached for both modules."""
    import time

    from MedNeXtV2SegmentLib.engine_client import EngineClient

    def no_blocking_run(*args, **kwargs):
        raise AssertionError("subprocess.run would block Slicer's GUI thread")

    monkeypatch.setattr(subprocess, "run", no_blocking_run)
    launched = []

    def factory(args, env, cwd):
        launched.append(args)
        assert args[-3:] == ["models", "--progress", "json", "list", "--json"][-3:]
        return EngineProcess([sys.executable, "-c", LISTING], env=env, cwd=cwd)

    engine = EngineClient(python="PythonSlicer", processFactory=factory)
    heard = []
    engine.modelList.addListener(heard.append)
    started = time.monotonic()
    assert engine.modelList.load()
    assert time.monotonic() - started < 0.4, "starting the list must not wait for it"
    assert engine.modelList.models == [] and not engine.modelList.poll()
    deadline = time.monotonic() + 30
    while not engine.modelList.poll():  # the client's timer ticks
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert heard == [None] and [c.id for c in engine.modelList.models] == ["lung"]
    assert engine.modelList.model("lung").modality == "CT"
    assert not engine.modelList.load(), "cached: no second read"
    assert len(launched) == 1


def test_a_list_that_cannot_be_read_again_is_told_to_every_panel():
    """After a download or import the list is read again; when the engine's Python cannot even
    start, each listening panel hears why, and the old list is not shown as if it were current."""
    from MedNeXtV2SegmentLib.model_list_loader import ModelListLoader

    def cannot_start():
        raise RuntimeError("Could not start 'PythonSlicer'")

    loader = ModelListLoader(cannot_start)
    loader.choices = [ModelChoice(id="lung", title="Lung")]
    heard, broken = [], []
    loader.addListener(lambda error: broken.append(1 / 0))  # one broken panel must not silence the other
    loader.addListener(heard.append)
    loader.reload()
    assert [str(e) for e in heard] == ["Could not start 'PythonSlicer'"] and loader.models == []
    with pytest.raises(RuntimeError):
        loader.load()  # a Refresh: the panel that pressed it shows the error itself


def test_a_model_added_while_the_list_is_being_read_is_read_again():
    """A registration that finishes while a read is under way: that read may have listed the models
    before the new one, so the loader reads again and the panels hear only the newer list."""
    from MedNeXtV2SegmentLib.model_list_loader import ModelListLoader

    class Listing:  # an engine run printing the installed models, finished on demand
        def __init__(self, ids):
            self.ids, self.finished, self.returncode, self.stderr_tail = ids, False, 0, []

        def poll(self):
            if not self.finished:
                return []
            rows = [{"id": i, "title": i, "installed": "yes"} for i in self.ids]
            return [SimpleNamespace(stream="stdout", text=json.dumps(rows))]

    installed, runs = ["lung"], []

    def start():
        runs.append(Listing(list(installed)))
        return runs[-1]

    loader = ModelListLoader(start)
    heard = []
    loader.addListener(lambda error: heard.append([c.id for c in loader.models]))
    assert loader.load()
    installed.append("my-model")  # Train registers its model meanwhile ...
    loader.reload()  # ... and says so while the first read is still running
    runs[0].finished = True
    assert not loader.poll() and heard == [] and len(runs) == 2  # the stale list is not shown; a new read runs
    runs[1].finished = True
    assert loader.poll() and heard == [["lung", "my-model"]]


def test_catalog_rows():
    rows = parse_model_list('{"models": [{"id": "lung", "title": "Lung tumour (CT)", "size": 126000000, '
                            '"installed": "no", "path": null, "modality": "CT", '
                            '"timings": {"cpu_s": 300, "gpu_s": 20}, "min_gpu_memory_gb": 6}], "home": "/x"}')
    lung = rows[0]
    assert (lung.id, lung.downloaded, lung.path) == ("lung", False, "")
    assert describe_model(lung) == "Lung tumour (CT) - CT - 120.2 MB - not downloaded"
    assert time_hint(lung, "cpu") == "About 5 min 00 s per image on CPU (measured)."
    assert time_hint(lung, "auto", tta=False) == ("About 20 s per image on GPU (measured); faster without TTA; "
                                                  "needs about 6 GB of GPU memory.")
    assert time_hint(ModelChoice("x", "X"), "cpu") == "No measured time for this model yet."
    assert time_hint(None, "cpu") == ""
    assert parse_model_list('[{"id": "a", "installed": "yes", "path": "/nonexistent"}]')[0].downloaded


@pytest.mark.parametrize("text", ["not json", '{"models": 3}', '[{"title": "no id"}]'])
def test_bad_lists_are_reported(text):
    with pytest.raises(CatalogError):
        parse_model_list(text)


def test_the_selector_shows_sizes_as_the_engine_writes_them_and_none_when_unknown():
    sizes = [describe_model(ModelChoice(id="a", title="A", size_bytes=n)) for n in (None, 0, 512, 2048, 5 * 1024 ** 2)]
    assert sizes == ["A - not downloaded", "A - not downloaded", "A - 512 B - not downloaded",
                     "A - 2.0 KB - not downloaded", "A - 5.0 MB - not downloaded"]
    assert model_choice({"id": "a", "size": True}).size_bytes is None


def test_one_selector_per_input_channel_from_the_bundle(tmp_path):
    """A two-channel model gets two volume selectors, in the engine's order."""
    import json

    from MedNeXtV2SegmentLib.models import channel_prompts, with_bundle_details

    bundle = make_tiny_bundle(tmp_path, "tiny-two")
    spec = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    spec["channels"] = [{"name": "T1", "modality": "MR"}, {"name": "FLAIR", "modality": "MR"}]
    spec["network"]["in_channels"] = 2
    spec["preprocessing"]["normalization"] = spec["preprocessing"]["normalization"] * 2
    (bundle / "model.json").write_text(json.dumps(spec), encoding="utf-8")
    choice = with_bundle_details(ModelChoice(id="tiny-two", title="x", path=str(bundle), downloaded=True))
    assert choice.channels == (("T1", "MR"), ("FLAIR", "MR")) and choice.modality == "MR"
    assert channel_prompts(choice.channels) == ["T1 (MR):", "FLAIR (MR):"]
    assert channel_prompts((("CT", "CT"),)) == ["Input volume:"]


def test_models_are_filtered_by_the_inputs_modality():
    from MedNeXtV2SegmentLib.models import models_for_modality

    ct, mr, both, unknown = (ModelChoice(id=i, title=i, modality=m) for i, m in
                             (("ct", "CT"), ("mr", "MR"), ("both", "CT+MR"), ("unknown", "")))
    everything = [ct, mr, both, unknown]
    assert [c.id for c in models_for_modality(everything, "CT")] == ["ct", "both", "unknown"]
    assert [c.id for c in models_for_modality(everything, "mr")] == ["mr", "both", "unknown"]
    assert models_for_modality(everything, "") == everything  # not from DICOM: nothing is hidden


def test_no_cuda_gpu_is_said_before_the_run():
    timed = ModelChoice(id="lung", title="Lung", cpu_s=150.0, gpu_s=12.0)
    assert time_hint(timed, "auto", cuda=False) == "No CUDA GPU found: expect about 2 min 30 s per image on the CPU (measured)."
    assert "No CUDA GPU found" in time_hint(timed, "cuda", cuda=False)
    assert time_hint(timed, "auto", cuda=True).startswith("About 12 s per image on GPU")
    assert "no measured CPU time" in time_hint(ModelChoice(id="x", title="x"), "auto", cuda=False)
    assert time_hint(timed, "cpu", cuda=False).startswith("About 2 min 30 s per image on CPU")


def test_cpu_estimate_says_how_it_is_made():
    """No catalog timing: tiles x passes x this computer's measured seconds per pass, or a plain
    statement that there is no measurement yet - never an invented number."""
    from MedNeXtV2SegmentLib.progress import ProgressEvent
    from MedNeXtV2SegmentLib.timing import cpu_estimate_text, passes_per_tile, seconds_per_pass, tile_count

    assert passes_per_tile([(0, 1, 2)], tta=True) == 8 and passes_per_tile([(0, 1, 2)] * 5, tta=False) == 5
    assert passes_per_tile([(0, 2), (1,)], tta=True) == 4 + 2  # each fold its own mirror axes
    # 512 x 512 x 100 CT at 0.7 x 0.7 x 2.5 mm, model at 2.5 x 0.7 x 0.7 mm (z, y, x), 64 x 128 x 128 patch
    assert tile_count((512, 512, 100), (0.7, 0.7, 2.5), (2.5, 0.7, 0.7), (64, 128, 128), 0.5) == 3 * 7 * 7
    assert tile_count((10, 10, 10), (1, 1, 1), None, (16, 16, 16), 0.5) == 1
    event = ProgressEvent("predict", 0.25, 30.0, "tile 5/20", {"tiles_done": 5, "tiles_total": 20, "elapsed_s": 10.0})
    assert seconds_per_pass(event, passes=8) == pytest.approx(10.0 / 5 / 8)
    every_tile = ProgressEvent("predict", 1.0, 0.0, "tile 3/3", {"tiles_done": 3, "tiles_total": 3, "elapsed_s": 6.0})
    assert seconds_per_pass(every_tile, passes=2) == pytest.approx(1.0)  # one batch held every tile
    assert seconds_per_pass(ProgressEvent("export", 1.0, 0.0, "", {}), 8) is None
    text = cpu_estimate_text(147, 8, 0.25)
    assert "about 4 min 54 s" in text and "147 tiles x 8 passes x 0.25 s per pass" in text
    assert "measured during the first CPU run" in cpu_estimate_text(147, 8, None)
