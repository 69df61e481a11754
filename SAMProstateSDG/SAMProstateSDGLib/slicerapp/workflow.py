"""What the SAM Prostate SDG module's Logic does, without Qt, so that CI tests it against slicer-core.

Boxes are markups ROI nodes, clicks a markups point list, results a segmentation node; each
volume node keeps its prepared volume (SAM embeddings computed once per slice) and its last boxes
and labels while its voxels and geometry are unchanged, and until it is removed from the scene.
Training runs in a child process. Importing this module loads neither torch nor SAM: they are
imported by the first computation, after the module has checked its requirements.
"""

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from SAMProstateSDGLib.apps.training_process import TrainingProcess, TrainingRequest, TrainingUpdate, register_trained_model, trained_models
from SAMProstateSDGLib.core.catalog import catalog
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.methods.registry import DEFAULT_METHOD, methods

BOX_FILTERS = {  # SAMProstateSDGLib.masks.boxes.ComponentFilter value (stored in scenes) -> title: how the coarse mask becomes boxes
    "3d": "Largest 3D component",
    "2d": "Largest component per slice (SAMMed)",
    "none": "Unfiltered coarse mask",
}
SAM_MODELS = [entry.id for entry in catalog().values() if entry.kind == "sam"]
CHECKPOINT_PREFIX = "checkpoint:"


def checkpointModel(path, samType: str) -> str:
    """The model id of a user's own SAM checkpoint file of architecture ``samType``."""
    return f"{CHECKPOINT_PREFIX}{samType}:{Path(path).resolve()}"


def segmentationVolume(segmentationNode):
    """The volume a segmentation node was made on: its reference image geometry node (None when it names none, or it is gone)."""
    return segmentationNode.GetNodeReference(segmentationNode.GetReferenceImageGeometryReferenceRole())


def checkSegmentationVolume(volumeNode, segmentationNode) -> None:
    """Refuse a segmentation node made on another volume: its result would be written, measured or exported on ``volumeNode``."""
    other = segmentationVolume(segmentationNode) if segmentationNode is not None else None
    if other is not None and other is not volumeNode:
        raise InputError(
            f"{segmentationNode.GetName()} is the segmentation of {other.GetName()}, not of {volumeNode.GetName()}: "
            f"choose {other.GetName()} as the input volume, or another output segmentation (none: a new one)"
        )


class ProstateWorkflow:
    """Boxes, segmentation and click refinement on MRML nodes, and background training; no Qt.

    Loaded models are kept per (model, device); each volume node keeps its prepared volume (SAM
    embeddings computed once per slice) and its last boxes and labels while its voxels and geometry
    are unchanged, so an edit of one box re-segments only that slice. Training runs in a child
    process; its outputs, resume states, embedding cache and the list of trained models
    (trained_models.json) live in ``userFolder``.
    """

    def __init__(self, userFolder: Path, python: str = sys.executable) -> None:
        # torch-free at import: the models' types are Any here
        self.encoderBackend = "auto"  # SAM's image encoder runtime, as the CLI's --backend (setEncoderBackend)
        self._bases: dict[tuple, Any] = {}  # (model, device) -> ProstateSegmenter: the base models
        self._segmenters: dict[tuple, Any] = {}  # (model, device, method) -> MethodSegmenter
        self._sessions: dict[tuple, tuple[Any, Any]] = {}  # (volume node ID, model, device, method) -> (volume fingerprint, BoxSegmentation)
        self._written: dict[tuple, tuple[dict, Any]] = {}  # (volume node ID, segmentation node ID) -> ({label: segment ID}, the labels written)
        self.userFolder = Path(userFolder)
        self.python = python  # the Python that runs the training child process
        self._training: TrainingProcess | None = None
        self._trainingStopped = False
        self.trainingError: str | None = None
        self._pendingEncoding: list[tuple[str, Any, int]] = []  # (volume node ID, EncodedVolume, slice index) still to encode, in order
        self._observedScenes: dict[Any, int] = {}  # scene -> observer tag of its NodeRemovedEvent

    @property
    def trainedModelsFile(self) -> Path:
        return self.userFolder / "trained_models.json"

    def trainedModelTitles(self) -> dict[str, str]:
        """Registered trained models: id -> title."""
        return {modelId: entry.title for modelId, entry in trained_models(self.trainedModelsFile).items()}

    def trainingRequest(
        self, data: Path, site: str, method: str, epochs: int, device: str = "auto", resume: bool = False, maxCases: int | None = None,
        overwrite: bool = False,
    ) -> TrainingRequest:
        """What ``startTraining`` runs: ``samprostate`` writing to runs/METHOD-SITE in the user folder (its ``previous_run``:
        a run trained there before, which only ``resume`` continues or ``overwrite`` replaces)."""
        if data is None or str(data) in ("", ".") or not Path(data).is_dir():
            raise InputError("choose the folder of training data (with its cases.csv) in the Training tab")
        if not (Path(data) / "cases.csv").is_file():
            raise InputError(f"{data} has no cases.csv; choose the folder of training data")
        output = self.userFolder / "runs" / f"{method}-{site}"
        return TrainingRequest(method, Path(data), site, output, epochs, device, resume, maxCases, cache=self.userFolder / "embeddings", overwrite=overwrite)

    def startTraining(
        self, data: Path, site: str, method: str, epochs: int, device: str = "auto", resume: bool = False, maxCases: int | None = None,
        overwrite: bool = False,
    ) -> TrainingProcess:
        """Start ``samprostate`` training in a child process (``trainingRequest``).

        ``maxCases`` trains on the site's first cases only (a quick trial).
        """
        if self.isTraining():
            raise RuntimeError("A training run is already in progress.")
        request = self.trainingRequest(data, site, method, epochs, device, resume, maxCases, overwrite)
        self._training, self._trainingStopped, self.trainingError = TrainingProcess(request, self.python), False, None
        self._training.start()
        return self._training

    def isTraining(self) -> bool:
        return self._training is not None and not self._training.finished

    def stopTraining(self) -> None:
        """Ask the run to stop and return at once (``pollTraining`` reports the end); its last completed
        epoch stays in the resume state."""
        if self.isTraining():
            self._trainingStopped = True
            assert self._training is not None  # isTraining
            self._training.stop()

    def shutdown(self) -> None:
        """End a training run now (the module is closing) and stop observing scenes."""
        if self.isTraining():
            self._trainingStopped = True
            assert self._training is not None  # isTraining
            self._training.kill()
        for scene, tag in self._observedScenes.items():
            scene.RemoveObserver(tag)
        self._observedScenes.clear()

    def pollTraining(self) -> TrainingUpdate:
        """New log lines and progress; once the run has succeeded, its model is registered (and reported in the lines)."""
        if self._training is None:
            return TrainingUpdate(finished=True)
        update = self._training.poll()
        if update.finished and self._training.returncode == 0:
            entry = register_trained_model(self.trainedModelsFile, self._training.request.method, self._training.request.manifest_path)
            self._bases = {key: value for key, value in self._bases.items() if key[0] != entry.id}
            self._segmenters = {key: value for key, value in self._segmenters.items() if key[0] != entry.id}
            self._sessions = {key: value for key, value in self._sessions.items() if key[1] != entry.id}
            update.lines.append(f"Registered the trained model: {entry.title}")
        elif update.finished and not self._trainingStopped:
            self.trainingError = self._training.error_message
        if update.finished:
            self._training = None
        return update

    def forgetVolumes(self, volumeIDs=None) -> None:
        """Drop the caches of these volume node IDs (default: all of them, the scene is closing)."""
        forget = (lambda volumeID: True) if volumeIDs is None else (lambda volumeID: volumeID in volumeIDs)
        self._sessions = {key: value for key, value in self._sessions.items() if not forget(key[0])}
        self._written = {key: value for key, value in self._written.items() if not forget(key[0])}
        self._pendingEncoding = [item for item in self._pendingEncoding if not forget(item[0])]

    def cachedVolumeIDs(self) -> set:
        """The volume node IDs whose prepared volumes are cached."""
        return {key[0] for key in self._sessions}

    def _observeScene(self, scene) -> None:
        """Drop a volume's caches as soon as its node leaves ``scene`` (not only when the scene closes)."""
        if scene not in self._observedScenes:
            self._observedScenes[scene] = scene.AddObserver(scene.NodeRemovedEvent, self._onNodeRemoved)

    def _onNodeRemoved(self, scene, event) -> None:
        if "_sessions" not in vars(self):  # the interpreter is tearing this object down while the scene clears
            return
        self.forgetVolumes({volumeID for volumeID in self.cachedVolumeIDs() if scene.GetNodeByID(volumeID) is None})

    def pendingEncodings(self, volumeNode=None) -> int:
        """How many slices queued by ``proposeBoxes`` (of ``volumeNode``; default: of any volume) are not encoded yet."""
        return sum(index not in encoded.embeddings for _, encoded, index in self._queued(volumeNode))

    def encodeNextSlice(self, volumeNode=None) -> bool:
        """Encode the next slice queued by ``proposeBoxes`` (of ``volumeNode``; default: of any volume); False once
        nothing of it is left.

        The module calls this from a Qt timer on the main thread, one slice per tick, while the user
        checks the boxes: inside Slicer the main thread holds the GIL while Qt idles, so a worker
        thread would not progress. Each call costs one encoder call (0.4-1.2 s per slice on a CPU, README).
        """
        for item in self._queued(volumeNode):
            self._pendingEncoding.remove(item)
            _, encoded, index = item
            if index not in encoded.embeddings:
                encoded.encode([index])
                return bool(self._queued(volumeNode))
        return False

    def dropQueuedEncodingsOfOtherModels(self, volumeNode, model: str = SAM_MODELS[0], device: str = "auto") -> None:
        """Drop the volume's slices queued for another model or device than ``segment`` will use (the user changed the
        choice after Propose boxes), or for voxels since changed: encoding them would only delay Segment, which encodes its own.
        Loads and checks nothing."""
        prepared = self._preparedVolume(volumeNode, model, device, _fingerprint(volumeNode))
        encoded = None if prepared is None else prepared.encoded
        self._pendingEncoding = [item for item in self._pendingEncoding if item[0] != volumeNode.GetID() or item[1] is encoded]

    def _queued(self, volumeNode) -> list[tuple[str, Any, int]]:
        return [item for item in self._pendingEncoding if volumeNode is None or item[0] == volumeNode.GetID()]

    def baseSegmenter(self, model: str = SAM_MODELS[0], device: str = "auto"):
        """The base models (coarse network + SAM) for ``model`` on ``device``, loaded once.

        ``model`` is a shipped SAM model, a user's checkpoint (``checkpointModel``) or a registered
        trained model; a trained coarse network joins the shipped LiteMedSAM, a trained method model
        builds on it.
        """
        from SAMProstateSDGLib.core.catalog import catalog_entry, default_entry
        from SAMProstateSDGLib.pipeline.segmenter import ProstateSegmenter

        key = (model, device)
        if key not in self._bases:
            trained = trained_models(self.trainedModelsFile).get(model)
            if model.startswith(CHECKPOINT_PREFIX):
                samType, path = model.removeprefix(CHECKPOINT_PREFIX).split(":", 1)
                base = ProstateSegmenter.load(device, samType, path, backend=self.encoderBackend)
            elif trained is not None:
                base = self.baseSegmenter(default_entry("sam").id, device)
                if trained.kind == "coarse":
                    base = base.with_coarse(trained.path, trained.sha256)
            elif catalog_entry(model, "sam") == default_entry("sam"):
                base = ProstateSegmenter.load(device, backend=self.encoderBackend)
            else:
                entry = catalog_entry(model, "sam")
                base = ProstateSegmenter.load(device, entry.model_type, entry.path, backend=self.encoderBackend)
            self._bases[key] = base
        return self._bases[key]

    def setEncoderBackend(self, backend: str) -> None:
        """Run SAM's image encoder on ``backend`` (``core.devices.BACKEND_CHOICES``) from now on; a change drops the
        loaded models and the volumes' cached embeddings, which belong to the previous backend."""
        from SAMProstateSDGLib.core.devices import BACKEND_CHOICES

        if backend not in BACKEND_CHOICES:
            raise InputError(f"unknown encoder backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
        if backend != self.encoderBackend:
            self.encoderBackend = backend
            self._bases, self._segmenters, self._sessions, self._pendingEncoding = {}, {}, {}, []

    def segmenter(self, model: str = SAM_MODELS[0], device: str = "auto", method: str = DEFAULT_METHOD):
        """``method`` (``methods.registry``) loaded onto the base models of ``model`` on ``device``, once.

        A registered trained model of the method's kind takes the place of its shipped model; a
        trained coarse network proposes the boxes of a box-prompted method. Other combinations are
        refused with a message that says what to choose.
        """
        from SAMProstateSDGLib.methods.registry import method as registered

        key = (model, device, method)
        if key in self._segmenters:
            return self._segmenters[key]
        chosen = registered(method)
        chosen.check_sam(model.startswith(CHECKPOINT_PREFIX))
        trained = trained_models(self.trainedModelsFile).get(model)
        base = self.baseSegmenter(model, device)
        if trained is None or trained.kind == "coarse" and chosen.takes_boxes:
            segmenter = chosen.load(base)
        elif trained.kind == chosen.model_kind:
            segmenter = chosen.load(base, trained)
        elif trained.kind == "coarse":
            raise InputError(f"{trained.title} is a coarse network, which proposes boxes; {chosen.title} prompts itself. "
                             "Choose a box-prompted method, or another model.")
        else:
            raise InputError(f"{trained.title} is a {trained.kind} model; it does not work with {chosen.title}. "
                             "Choose the method it was trained for.")
        self._segmenters[key] = segmenter
        return segmenter

    def deviceNote(self, device: str = "auto") -> str | None:
        """What to tell the user about where the networks run (None on a GPU; a note when ``auto`` falls back to the CPU)."""
        from SAMProstateSDGLib.core.devices import device_note, pick_device

        return device_note(pick_device(device)) if device == "auto" else None

    def orientationNote(self, volumeNode) -> str | None:
        """What to tell the user when the coarse network read the volume with superior and inferior the other way
        round from its header (the slice-order check, after Propose boxes); None otherwise."""
        return "; ".join(f"{volumeNode.GetName()}: {warning}" for warning in self._inputWarnings(volumeNode)) or None

    def session(self, volumeNode, model: str = SAM_MODELS[0], device: str = "auto", method: str = DEFAULT_METHOD):
        """The volume's BoxSegmentation, rebuilt when its voxels or geometry changed.

        Sessions of one volume and model share its prepared volume, so each slice is encoded once. A volume
        the pipeline cannot segment (a label map, a constant or single-slice volume) is refused as the CLI refuses it.
        """
        from SAMProstateSDGLib.io.volume_io import validate_volume
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        key = (volumeNode.GetID(), model, device, method)
        fingerprint = _fingerprint(volumeNode)
        cached = self._sessions.get(key)
        if cached is None or cached[0] != fingerprint:
            self._observeScene(volumeNode.GetScene())
            prepared = self._preparedVolume(volumeNode, model, device, fingerprint)  # another method's, on the same base models
            if prepared is None:
                image = bridge.image_from_volume_node(volumeNode)
                validate_volume(image, volumeNode.GetName())
                prepared = self.baseSegmenter(model, device).prepare(image)
            cached = self._sessions[key] = (fingerprint, self.segmenter(model, device, method).session(prepared))
        return cached[1]

    def _preparedVolume(self, volumeNode, model: str, device: str, fingerprint: tuple):
        """The volume as prepared for ``model`` on ``device`` by a session of any method, if its voxels and geometry are still
        ``fingerprint`` (``_fingerprint``)."""
        wanted = (volumeNode.GetID(), model, device, fingerprint)
        return next((session.volume for (volumeID, sessionModel, sessionDevice, _), (sessionPrint, session) in self._sessions.items()
                     if (volumeID, sessionModel, sessionDevice, sessionPrint) == wanted), None)

    def proposeBoxes(
        self, volumeNode, method: str = next(iter(BOX_FILTERS)), model: str = SAM_MODELS[0], device: str = "auto",
        segmentationMethod: str = DEFAULT_METHOD,
    ) -> list:
        """Replace the volume's box ROIs with boxes proposed by the coarse network; returns the new ROIs.

        ``method`` is a ``BOX_FILTERS`` id; ``segmentationMethod`` the method that will segment inside the boxes
        (a trained decoder works only with its own). The boxed slices are queued for ``encodeNextSlice``, which
        encodes them while the user checks the boxes.
        """
        from SAMProstateSDGLib.masks.boxes import ComponentFilter
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        segmenter = self.baseSegmenter(model, device)
        options = dataclasses.replace(segmenter.options, component_filter=ComponentFilter(method))
        volume = self.session(volumeNode, model, device, segmentationMethod).volume
        boxes = segmenter.propose_boxes(volume, options)
        self._pendingEncoding = [item for item in self._pendingEncoding if item[0] != volumeNode.GetID()]
        self._pendingEncoding += [(volumeNode.GetID(), volume.encoded, index) for index in sorted(boxes)]
        for roiNode in bridge.box_roi_nodes(volumeNode):
            volumeNode.GetScene().RemoveNode(roiNode)
        return bridge.roi_nodes_from_boxes(volumeNode, boxes)

    def addBox(self, volumeNode, pointRAS):
        """A new box ROI on the volume's slice through ``pointRAS`` (the user then moves and resizes it)."""
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        return bridge.add_box_roi_node(volumeNode, pointRAS)

    def segment(self, volumeNode, roiNodes=None, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto", method: str = DEFAULT_METHOD):
        """Segment inside the boxes (default: the volume's box ROIs in the scene), or every slice for a
        method that prompts itself (DeSAM, SAMed); returns the segmentation node."""
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        checkSegmentationVolume(volumeNode, segmentationNode)
        session = self.session(volumeNode, model, device, method)
        segmenter = self.segmenter(model, device, method)
        if not segmenter.method.takes_boxes:
            session.set_labels(segmenter.labels(session.volume))
            return self._write(session, volumeNode, segmentationNode, model, method)
        roiNodes = bridge.box_roi_nodes(volumeNode) if roiNodes is None else roiNodes
        if not roiNodes:
            raise InputError(f"{volumeNode.GetName()} has no boxes to segment in: press Propose boxes, or Add box, first")
        changed = session.update(bridge.boxes_from_roi_nodes(volumeNode, roiNodes))
        logging.info(f"SAMProstateSDG: re-segmented slices {changed}")
        self._showConfidence(volumeNode, session, segmenter, roiNodes)
        return self._write(session, volumeNode, segmentationNode, model, method)

    def _showConfidence(self, volumeNode, session, segmenter, roiNodes) -> None:
        """Colour each box by its slice's confidence (``masks.confidence``)."""
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        confidences = segmenter.confidences(session)
        for roiNode in roiNodes:
            index = bridge.box_from_roi_node(volumeNode, roiNode)[0]
            if index in confidences:
                bridge.show_box_confidence(roiNode, confidences[index])

    def slicesToCheck(self, volumeNode, model: str = SAM_MODELS[0], device: str = "auto", method: str = DEFAULT_METHOD) -> list:
        """(slice index, SliceConfidence) of the flagged slices of the volume's segmentation with this model and
        method, in slice order; none before its first Segment (nothing is loaded or computed for it)."""
        cached = self._sessions.get((volumeNode.GetID(), model, device, method))
        if cached is None or not cached[1].segmented:
            return []
        session = cached[1]
        confidences = self.segmenter(model, device, method).confidences(session)
        return [(index, confidence) for index, confidence in sorted(confidences.items()) if confidence.flagged]

    @staticmethod
    def jumpToSlice(volumeNode, sliceIndex: int) -> None:
        """Centre the slice views on the slice's box (on the slice's centre when it has none); boxes moved off the volume are passed over."""
        import slicer

        from SAMProstateSDGLib.slicerapp import mrml as bridge

        boxes = [roi for roi in bridge.box_roi_nodes(volumeNode) if bridge.box_slice(volumeNode, roi) == sliceIndex]
        if boxes:
            centre = bridge.roi_centre_ras(boxes[0])
        else:
            columns, rows, _ = volumeNode.GetImageData().GetDimensions()
            centre = (bridge.ijk_to_ras(volumeNode) @ [(columns - 1) / 2, (rows - 1) / 2, sliceIndex, 1.0])[:3]
        slicer.vtkMRMLSliceNode.JumpAllSlices(volumeNode.GetScene(), *map(float, centre), slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    def segmentSliceWithPoints(
        self, volumeNode, sliceIndex: int, pointListNode, roiNode=None, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto",
        method: str = DEFAULT_METHOD,
    ):
        """Segment one slice from the clicks on it (and the ROI's box, if given); returns the segmentation node."""
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        checkSegmentationVolume(volumeNode, segmentationNode)
        if self.segmenter(model, device, method).method.zonal:
            raise InputError("clicks refine the whole gland, not zones; segment with a method that gives one prostate segment first")
        prompts = bridge.point_prompts(volumeNode, pointListNode)
        if sliceIndex not in prompts:
            raise InputError(f"{pointListNode.GetName()} has no points on slice {sliceIndex}")
        box = None
        if roiNode is not None:
            roiSlice, box = bridge.box_from_roi_node(volumeNode, roiNode)
            if roiSlice != sliceIndex:
                raise InputError(f"{roiNode.GetName()} lies on slice {roiSlice}, not on slice {sliceIndex}")
        session = self.session(volumeNode, model, device, method)
        shown = None if box is not None else dict(bridge.box_from_roi_node(volumeNode, roi) for roi in bridge.box_roi_nodes(volumeNode))  # the boxes a slice without one may start from
        used = session.refine_slice(sliceIndex, bridge.with_box(prompts[sliceIndex], box), shown)
        if used is not None and used != box:  # clicks edited the box (LiteMedSAM) or gave the slice a start box: show it, so a later Segment keeps it
            if roiNode is None:
                roiNode = bridge.roi_nodes_from_boxes(volumeNode, {sliceIndex: used})[0]
            else:
                bridge.set_roi_box(volumeNode, roiNode, sliceIndex, used)
        self._showConfidence(volumeNode, session, self.segmenter(model, device, method), [roiNode] if roiNode is not None else [])
        return self._write(session, volumeNode, segmentationNode, model, method)

    def clickMode(self, model: str = SAM_MODELS[0], device: str = "auto", method: str = DEFAULT_METHOD) -> str:
        """What a click does with this model and method: a point for a point-trained decoder, or a box edit."""
        if self.segmenter(model, device, method).base.sam.box_only:
            pointTrained = " or ".join(f"'{item.title}'" for item in methods().values() if item.takes_points)
            return f"Clicks edit the slice's box: this SAM decoder was trained with boxes only (Method {pointTrained} makes them points)."
        return "Clicks are points: the slice is re-decoded from its box, all its points and its previous mask."

    def refineWithPoints(
        self, volumeNode, pointListNode, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto", method: str = DEFAULT_METHOD
    ):
        """Re-segment every slice that has clicks, with that slice's box ROI when it has one; a slice segmented with
        clicks that has none left (the user deleted them) goes back to its box alone."""
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        checkSegmentationVolume(volumeNode, segmentationNode)
        roiBySlice = self._boxRoisBySlice(volumeNode)
        prompts = bridge.point_prompts(volumeNode, pointListNode)
        session = self.session(volumeNode, model, device, method)
        unclicked = sorted(session.clicked - prompts.keys())
        for sliceIndex in unclicked:
            roi = roiBySlice.get(sliceIndex)
            session.unclick_slice(sliceIndex, None if roi is None else bridge.box_from_roi_node(volumeNode, roi)[1])
        if unclicked:
            rois = [roiBySlice[index] for index in unclicked if index in roiBySlice]
            self._showConfidence(volumeNode, session, self.segmenter(model, device, method), rois)
            segmentationNode = self._write(session, volumeNode, segmentationNode, model, method)
        for sliceIndex in sorted(prompts):
            segmentationNode = self.segmentSliceWithPoints(
                volumeNode, sliceIndex, pointListNode, roiBySlice.get(sliceIndex), segmentationNode, model=model, device=device, method=method
            )
        return segmentationNode

    @staticmethod
    def clicksNode(volumeNode, pointListNode=None):
        """The point list clicks are placed in: the chosen one, else a new "clicks" list (inside blue, outside red)."""
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        return pointListNode if pointListNode is not None else bridge.new_clicks_node(volumeNode.GetScene())

    def placeClick(
        self, volumeNode, pointListNode, pointIndex: int, inside: bool, segmentationNode=None, model: str = SAM_MODELS[0], device: str = "auto",
        method: str = DEFAULT_METHOD,
    ):
        """A click just placed in the views: mark it inside or outside and re-segment its slice at once (that slice only:
        with a point-trained decoder one decoder pass on the cached embedding). Returns the segmentation node. A click
        outside the volume is taken out of the list again (safe while it is being placed: vtkSlicerMarkupsWidget::PlacePoint
        no longer uses its index in persistent place mode) and refused."""
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        pixel = bridge.click_pixel(volumeNode, pointListNode, pointIndex)
        if pixel is None:
            pointListNode.RemoveNthControlPoint(pointIndex)
            raise InputError(f"the click lies outside {volumeNode.GetName()}; click on one of its slices")
        bridge.mark_click(pointListNode, pointIndex, inside)
        sliceIndex = pixel[0]
        return self.segmentSliceWithPoints(
            volumeNode, sliceIndex, pointListNode, self._boxRoisBySlice(volumeNode).get(sliceIndex), segmentationNode, model=model, device=device,
            method=method,
        )

    @staticmethod
    def _boxRoisBySlice(volumeNode) -> dict:
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        return {bridge.box_from_roi_node(volumeNode, roi)[0]: roi for roi in bridge.box_roi_nodes(volumeNode)}

    @staticmethod
    def measurements(volumeNode, segmentationNode, psa: float | None = None):
        """Gland volume, diameters, ellipsoid volume (and zone volumes, PSA density) of a segmentation as it is now,
        the user's edits included: the segments the module last wrote into it (``clinical_export.segmentation_labels``)."""
        from SAMProstateSDGLib.io.measurements import measure
        from SAMProstateSDGLib.slicerapp import mrml as bridge
        from SAMProstateSDGLib.slicerapp.clinical_export import segmentation_labels

        labels, zonal = segmentation_labels(volumeNode, segmentationNode)
        return measure(labels, bridge.ijk_to_ras(volumeNode), zonal, psa)

    def provenance(self, model: str = SAM_MODELS[0], method: str = DEFAULT_METHOD, segmentationNode=None):
        """The software, method and model files (with SHA-256) behind a segmentation: those that made what the module last
        wrote into ``segmentationNode``, else these choices."""
        from SAMProstateSDGLib.slicerapp import mrml as bridge
        from SAMProstateSDGLib.slicerapp.clinical_export import provenance_of

        written = bridge.written_result(segmentationNode) if segmentationNode is not None else None
        if written is not None:
            model, method = written.model, written.method
        checkpoint = Path(model.removeprefix(CHECKPOINT_PREFIX).split(":", 1)[1]) if model.startswith(CHECKPOINT_PREFIX) else None
        return provenance_of(method, model, trained_models(self.trainedModelsFile), checkpoint)

    def exportDicomSeg(self, volumeNode, segmentationNode, path, instanceFile, model: str = SAM_MODELS[0], method: str = DEFAULT_METHOD) -> None:
        """Write the segmentation as it is now as a DICOM SEG referencing the DICOM series the volume was loaded
        from (``instanceFile``: SOP Instance UID -> file, i.e. ``slicer.dicomDatabase.fileForInstance``)."""
        from SAMProstateSDGLib.slicerapp.clinical_export import export_dicom_seg

        export_dicom_seg(volumeNode, segmentationNode, Path(path), instanceFile, self.provenance(model, method, segmentationNode))

    def writeReport(
        self, volumeNode, segmentationNode, page=None, reportJson=None, psa: float | None = None, instanceFile=None,
        model: str = SAM_MODELS[0], method: str = DEFAULT_METHOD,
    ):
        """Write the one-page report (PNG or PDF) and/or the report JSON of the segmentation as it is now; returns its measurements."""
        from SAMProstateSDGLib.slicerapp.clinical_export import write_report_files

        return write_report_files(
            volumeNode, segmentationNode, Path(page) if page else None, Path(reportJson) if reportJson else None,
            self.provenance(model, method, segmentationNode), psa, instanceFile, self._inputWarnings(volumeNode),
        )

    def _inputWarnings(self, volumeNode) -> tuple[str, ...]:
        """What the report must say about the volume as a session read it (with its voxels and geometry unchanged)."""
        from SAMProstateSDGLib.apps.clinical_outputs import input_warnings

        fingerprint = _fingerprint(volumeNode)
        read = [session.volume for (volumeID, *_), (sessionPrint, session) in self._sessions.items()
                if volumeID == volumeNode.GetID() and sessionPrint == fingerprint]
        return next(filter(None, map(input_warnings, read)), ())

    def _write(self, session, volumeNode, segmentationNode, model: str, method: str):
        """Show the session's labels: update the segments this workflow wrote before, unless the user has
        edited them since (Segment Editor); then, and the first time, add new segments ("prostate (2)"). The node
        records which segments hold the result and what made them (``mrml.WrittenResult``)."""
        from SAMProstateSDGLib.methods.registry import method as registered
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        segments = registered(method).segments
        key = (volumeNode.GetID(), segmentationNode.GetID() if segmentationNode else None)
        written = self._written.get(key)
        if written and self._unedited(written, volumeNode, segmentationNode, segments):
            for label, segmentId in written[0].items():
                bridge.set_segment_mask(segmentationNode, segmentId, session.labels == label, volumeNode)
        else:
            if written:
                logging.info("SAMProstateSDG: the segments were edited since they were written; the new result goes into new segments")
            segmentationNode, segmentIds = bridge.add_label_segments(session.labels, volumeNode, segmentationNode, segments)
            key = (volumeNode.GetID(), segmentationNode.GetID())
            written = (segmentIds, None)
        self._written[key] = (written[0], session.labels.copy())
        bridge.record_written_result(segmentationNode, bridge.WrittenResult(written[0], method, model))
        return segmentationNode

    @staticmethod
    def _unedited(written, volumeNode, segmentationNode, segments) -> bool:
        """Whether the segments written last are all still there, of the same labels, and hold what was written."""
        from SAMProstateSDGLib.slicerapp import mrml as bridge

        segmentIds, labels = written
        segmentation = segmentationNode.GetSegmentation()
        if segmentIds.keys() != {segment.label for segment in segments} or not all(segmentation.GetSegment(i) for i in segmentIds.values()):
            return False
        return all(
            ((bridge.labels_from_segmentation(segmentationNode, {1: segmentId}, volumeNode) > 0) == (labels == label)).all()
            for label, segmentId in segmentIds.items()
        )


def _fingerprint(volumeNode) -> tuple:
    """What a cached session of the volume depends on: its voxels' modification time and its geometry."""
    from SAMProstateSDGLib.slicerapp import mrml as bridge

    return (volumeNode.GetImageData().GetMTime(), tuple(bridge.ijk_to_ras(volumeNode).ravel()))
