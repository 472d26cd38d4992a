"""Train logic: scene cases -> dataset folder -> `mednextv2 train` run -> registered model.

Works without the GUI (the self-test and scripts call `checkCases`, `createJob`, `startTraining`
and `TrainingRun.wait()`). Never opens dialogs: it raises, and the widget decides what to show.
Engine runs, the install step, the model list and `models import` go through the engine client
both modules share (MedNeXtV2SegmentLib/engine_client.py), so they start and stop the engine the same way.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from MedNeXtV2SegmentLib.command import engine_threads
from MedNeXtV2SegmentLib.engine_client import EngineClient, EngineRunner, shared_client
from MedNeXtV2SegmentLib.models import ModelChoice
from MedNeXtV2SegmentLib.parameters import from_saved
from MedNeXtV2TrainLib.case_checks import CaseFacts, Problem, check_cases
from MedNeXtV2TrainLib.case_steps import CaseStep, Steps, run_steps
from MedNeXtV2TrainLib.dataset_layout import DatasetWriter, safe_case_ids
from MedNeXtV2TrainLib.label_table import BaseLabel, DatasetLabel, SegmentLabel, union_of_segments, value_by_segment
from MedNeXtV2TrainLib.pairing import PairingResult, pair_cases
from MedNeXtV2TrainLib.resume_state import TrainState, find_resumable, load_state, new_job_dir, save_state
from MedNeXtV2TrainLib.settings import TrainSettings
from MedNeXtV2TrainLib.training_run import TrainingRun

logger = logging.getLogger(__name__)
DATASET_FOLDER = "dataset"
SETTINGS_PARAMETER = "TrainSettings"


def default_jobs_root() -> Path:
    """Training jobs live beside the model cache (MEDNEXTV2_HOME), not in a temp folder that gets cleaned."""
    from mednextv2.store.cache import default_home

    return default_home() / "training"


def base_labels(choice: Optional[ModelChoice]) -> List[BaseLabel]:
    """The base model's labels; the catalog lists names in head order, so values are 1..n."""
    return [] if choice is None else [BaseLabel(i + 1, name) for i, name in enumerate(choice.labels)]


def check_apart(jobsRoot: Path, datasetDir: Path) -> None:
    """The training folder (job, checkpoints, new model) must not lie in the user's dataset folder:
    the engine's output would mix with its input, and a cleanup could delete the user's files. A dataset inside the training folder is
    fine: each job gets a new folder of its own."""
    jobs, dataset = jobsRoot.resolve(), datasetDir.resolve()
    if jobs == dataset or dataset in jobs.parents:
        raise ValueError(f"the training folder {jobsRoot} is inside the dataset folder {datasetDir}; "
                         "choose a training folder outside the dataset")


class MedNeXtV2TrainLogic(ScriptedLoadableModuleLogic):
    def __init__(self, engine: Optional[EngineClient] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.engine = engine or shared_client()  # shared with the Segment module

    # -- settings: kept in the scene's parameter node, so a saved scene reopens with them ------
    def loadSettings(self) -> TrainSettings:
        # The Segment module's policy for saved settings (unknown keys dropped, bad ones -> defaults).
        text = self.getParameterNode().GetParameter(SETTINGS_PARAMETER)
        return from_saved(TrainSettings, text, "training settings", TrainSettings.from_dict)

    def saveSettings(self, settings: TrainSettings) -> None:
        self.getParameterNode().SetParameter(SETTINGS_PARAMETER, json.dumps(settings.to_dict()))

    # -- cases ---------------------------------------------------------------------------------
    @staticmethod
    def pairScene() -> PairingResult:
        from MedNeXtV2TrainLib.scene_cases import scene_records

        return pair_cases(*scene_records())

    @classmethod
    def checkCases(cls, cases) -> Tuple[List[Problem], List[SegmentLabel], Dict[str, list]]:
        """(problems, union of segments, segments per case name) for SceneCase objects."""
        return run_steps(cls.checkCaseSteps(cases))

    @staticmethod
    def checkCaseSteps(cases) -> "Steps[Tuple[List[Problem], List[SegmentLabel], Dict[str, list]]]":
        """`checkCases` one case per step (case_steps.py), for the panel's timer."""
        from MedNeXtV2TrainLib.scene_cases import case_facts

        facts: List[CaseFacts] = []
        segmentsByCase: Dict[str, list] = {}
        cases = list(cases)
        for index, case in enumerate(cases):
            yield CaseStep(index, len(cases), case.name)
            caseFacts, segments = case_facts(case)
            facts.append(caseFacts)
            segmentsByCase[case.name] = segments
        union = union_of_segments([[(name, color) for _, name, color in segs] for segs in segmentsByCase.values()])
        return check_cases(facts, [s.name for s in union]), union, segmentsByCase

    # -- dataset -------------------------------------------------------------------------------
    @classmethod
    def exportDataset(cls, cases, labels: Sequence[DatasetLabel], channelName: str, datasetDir: Path,
                      onCase: Optional[Callable[[int, int, str], None]] = None) -> Path:
        """`exportDatasetSteps` in a row; `onCase(index, total, name)` before each case."""
        return run_steps(cls.exportDatasetSteps(cases, labels, channelName, datasetDir),
                         None if onCase is None else lambda step: onCase(step.index, step.total, step.name))

    @staticmethod
    def exportDatasetSteps(cases, labels: Sequence[DatasetLabel], channelName: str, datasetDir: Path) -> "Steps[Path]":
        """Write the cases as an nnU-Net raw dataset, one case per step; values follow `labels` in every case.

        Segments are exported in dataset-value order, not each segmentation's own order: where
        segments overlap, the later one wins, so the higher dataset value must win in every case
        alike, or one voxel kind would get different labels in different cases.
        """
        from MedNeXtV2TrainLib.scene_cases import case_images, segments_of

        values = value_by_segment(labels)
        cases = list(cases)
        ids = safe_case_ids([case.name for case in cases])
        # Closing the generator mid-way (Cancel) exits this block: the partial folder is removed.
        with DatasetWriter(Path(datasetDir), labels, channelName, title=Path(datasetDir).parent.name) as writer:
            for index, (caseId, case) in enumerate(zip(ids, cases)):
                yield CaseStep(index, len(cases), case.name)
                segments = sorted(segments_of(case.segmentation), key=lambda s: values.get(s[1], 0))
                image, label = case_images(case, [s[0] for s in segments])
                writer.add_case(caseId, image, label, [s[1] for s in segments], values)
            return writer.finish()

    # -- training ------------------------------------------------------------------------------
    @classmethod
    def createJob(cls, settings: TrainSettings, jobsRoot: Path, cases=None, labels: Sequence[DatasetLabel] = (),
                  datasetDir: Optional[Path] = None, onCase=None) -> Tuple[Path, TrainState]:
        """`createJobSteps` in a row; `onCase(index, total, name)` before each case is written."""
        return run_steps(cls.createJobSteps(settings, jobsRoot, cases, labels, datasetDir),
                         None if onCase is None else lambda step: onCase(step.index, step.total, step.name))

    @classmethod
    def createJobSteps(cls, settings: TrainSettings, jobsRoot: Path, cases=None, labels: Sequence[DatasetLabel] = (),
                       datasetDir: Optional[Path] = None) -> "Steps[Tuple[Path, TrainState]]":
        """A new job folder with its dataset: the scene `cases` exported into it (one case per step),
        or `datasetDir` as is.

        The bundle folder is named after the job (unique under the root) because the engine takes
        the model id from it, and the catalog needs a new id for every trained model. A failed
        export removes the job folder again: nothing half-made is left to resume; neither does a Cancel (closing the generator).
        """
        jobsRoot = Path(jobsRoot).resolve()  # the engine runs in its own folder: no relative paths
        datasetDir = Path(datasetDir).resolve() if datasetDir is not None else None
        if datasetDir is not None:
            check_apart(jobsRoot, datasetDir)
        jobDir = new_job_dir(jobsRoot, settings.model_id)
        dataset = Path(datasetDir) if datasetDir else jobDir / DATASET_FOLDER
        if datasetDir is None:
            try:
                yield from cls.exportDatasetSteps(cases, labels, settings.modality, dataset)
            except BaseException:  # GeneratorExit too: a cancelled export leaves no job
                shutil.rmtree(jobDir, ignore_errors=True)
                raise
        state = TrainState(dataset=str(dataset), output_bundle=str(jobDir / jobDir.name), settings=settings)
        save_state(jobDir, state)
        return jobDir, state

    def startTraining(self, jobDir: Path, state: Optional[TrainState] = None, resume: bool = False) -> TrainingRun:
        self.engine.installLogic.require()  # the panel ran installLogic.ensure() before
        state = state or load_state(jobDir)
        run = TrainingRun(Path(jobDir), state, self.engine, threads=engine_threads())
        run.start(resume=resume)
        return run

    @staticmethod
    def resumableJobs(jobsRoot: Path) -> List[Tuple[Path, TrainState]]:
        return find_resumable(Path(jobsRoot))

    # -- finish --------------------------------------------------------------------------------
    def startRegistration(self, bundlePath: Path) -> EngineRunner:
        """`mednextv2 models import BUNDLE` (poll it with `pollRegistration`)."""
        return self.engine.startModelAction("import", str(bundlePath))

    @staticmethod
    def pollRegistration(run: EngineRunner, onLog: Optional[Callable[[str], None]] = None) -> bool:
        """Forward new output lines; True once the import has finished and all of them are read."""
        finished = run.finished  # read before draining, so no line is left behind
        for line in run.poll():
            if onLog:
                onLog(line.text)
        return finished

    def finishRegistration(self, run: EngineRunner) -> None:
        """EngineError with the engine's words if the import failed; else the shared model list is
        read again, so the new model appears in the Segment panel without a Refresh."""
        self.engine.finishModelAction(run)

    @staticmethod
    def markRegistered(jobDir: Path, modelId: str) -> TrainState:
        state = load_state(jobDir).with_progress(status="registered", registered_model_id=modelId)
        save_state(jobDir, state)
        return state
