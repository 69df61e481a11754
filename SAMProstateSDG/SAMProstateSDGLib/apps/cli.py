"""The ``samprostate`` command: segment, evaluate, train-coarse."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NoReturn

from .. import __version__
from ..core.catalog import COARSE_INPUT_REPRESENTATIONS, DEFAULT_GRID_SIDE, SAM_TYPES
from ..core.devices import BACKEND_CHOICES, DEVICE_CHOICES, PRECISION_CHOICES
from ..core.errors import INTERRUPTED, InputError
from ..masks.boxes import DEFAULT_COARSE_OPTIONS, CoarseOptions, ComponentFilter, ProposalOptions
from ..methods.registry import DEFAULT_METHOD, MethodOptions, box_method_ids, method, runnable_methods, trainable_methods, training_defaults
from ..training.defaults import COARSE_CONTEXT_MM, COARSE_INPUT_REPRESENTATION, COARSE_TRAINING, RESUME_STATE, VALIDATION_FRACTION
from .training_process import TRAINING_METHODS, manifest_beside, trained_model_file


def _add_model_options(parser: argparse.ArgumentParser, default_method: str | None = DEFAULT_METHOD) -> None:
    """``default_method`` None: every method (``evaluate``'s rows)."""
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to run (default: cuda, then mps, then cpu)")
    parser.add_argument("--sam-checkpoint", type=Path, help="your own SAM checkpoint (default: the shipped LiteMedSAM)")
    parser.add_argument("--sam-type", choices=SAM_TYPES, help="architecture of --sam-checkpoint (default vit_b)")
    parser.add_argument("--coarse-checkpoint", type=Path, help="a coarse network from train-coarse (default: the shipped one)")
    parser.add_argument("--method-model", type=Path,
                        help="a model from train --method METHOD (METHOD.pt, with the METHOD.json written beside it) in place of the "
                        "shipped model of --method METHOD")
    parser.add_argument("--component-filter", choices=[item.value for item in ComponentFilter], default=ProposalOptions().component_filter.value,
                        help="keep the most plausible 3D component (plausible: probability mass x slice continuity, 2-200 mL), "
                             "the largest in the volume (3d), cut where its cross-sections jump (profile), per slice (2d, as SAMMed), "
                             "or all (none)")
    parser.add_argument("--reorient", action=argparse.BooleanOptionalAction, default=DEFAULT_COARSE_OPTIONS.reorient,
                        help="the coarse network reads the volume in the training orientation (LPS), whatever the file's voxel order")
    parser.add_argument("--n4", action=argparse.BooleanOptionalAction, default=DEFAULT_COARSE_OPTIONS.n4,
                        help="N4 bias-field correction (on a shrunk copy) before the coarse network")
    parser.add_argument("--coarse-tta", action=argparse.BooleanOptionalAction, default=DEFAULT_COARSE_OPTIONS.tta,
                        help="average the coarse network over the slices and their left-right mirror images")
    parser.add_argument("--slice-order-check", action=argparse.BooleanOptionalAction, default=DEFAULT_COARSE_OPTIONS.slice_order,
                        help="the coarse network also reads the slices in the reverse of the header's order and keeps the order "
                             "it is more certain in, with a warning when that puts superior and inferior against the header")
    parser.add_argument("--margin-mm", type=float, default=ProposalOptions().margin_mm, help="box margin around the coarse component (mm)")
    parser.add_argument("--z-smoothing-mm", type=float, default=ProposalOptions().z_smoothing_mm,
                        help="sigma (mm along the slice axis) of the Gaussian that smooths SAM's box logits across neighbouring slices; 0: off")
    parser.add_argument("--method", choices=tuple(runnable_methods()), default=default_method,
                        help="; ".join(f"{key}: {item.title}" for key, item in runnable_methods().items()) + f" (default {default_method})")
    parser.add_argument("--grid-points", type=int, default=DEFAULT_GRID_SIDE,
                        help=f"methods prompted by a point grid: points per side of the grid (default {DEFAULT_GRID_SIDE})")
    _add_backend_options(parser)


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="the box-prompted image encoder's runtime: auto times the installed ones once on this machine and "
                             "keeps the fastest (never slower than torch fp32); openvino and onnxruntime run a graph exported "
                             "once and cached (CPU only; pip install openvino onnx, or onnxruntime onnx; in a clone pip install -e '.[fast]')")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="the encoder's arithmetic: auto lets --backend auto measure fp32 and, on CPUs with native bfloat16 "
                             "(AVX512-BF16, AMX), bf16 (same Dice within 0.005, README)")


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other refusal; the usage itself is on --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"samprostate: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="samprostate", description="Prostate segmentation on T2 MRI: coarse network boxes prompt SAM.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment a volume and write a label volume")
    segment.add_argument("input", type=Path, nargs="+",
                         help="a volume SimpleITK reads (nii, nii.gz, nrrd, mha) or a DICOM folder; several volumes, or a folder "
                              "of volume files, are segmented as a batch with the models loaded once")
    segment.add_argument("-o", "--output", type=Path, required=True,
                         help="label volume to write: .nii.gz, .nii, .nrrd or .mha (1 = prostate; SAMed: 1 TZ, 2 PZ); "
                              "for a batch, the folder for NAME.nii.gz")
    segment.add_argument("--boxes-out", type=Path, help="write the boxes used to this JSON file")
    segment.add_argument("--boxes-in", type=Path, help="segment with these (possibly edited) boxes instead of proposing them")
    segment.add_argument("--overlay", type=Path, help="write a PNG of several slices with outline and boxes")
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    segment.add_argument("--merge-slices", action="store_true",
                         help="encode four gland crops per encoder pass (SAMMed's merge): about twice as fast, but Dice lower "
                              "(by 0.028 on average on NCI-ISBI cases, README)")
    _add_clinical_options(segment)
    _add_model_options(segment)

    bench = commands.add_parser("bench", help="time each stage against the naive path on real volumes (Markdown)")
    bench.add_argument("--data", type=Path, required=True)
    bench.add_argument("--split", default="unseen", help="cases.csv split to time (default unseen)")
    bench.add_argument("--site", help="site to time")
    bench.add_argument("--cases", type=int, default=2, help="how many volumes (default 2)")
    bench.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    _add_backend_options(bench)
    bench.add_argument("--parity", action="store_true",
                       help="instead of timing: Dice of every encoder backend × precision against torch fp32 on the 12 "
                            "non-training cases (source-extra and unseen splits; --cases is ignored)")
    bench.add_argument("--review-seconds", type=float, default=10.0,
                       help="how long a user looks at the proposed boxes before pressing Segment, for the wait it times (default 10)")
    bench.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the encoder variants; the median round counts (default 3)")
    bench.add_argument("--output", type=Path, help="also write the report to this Markdown file")
    bench.add_argument("--overwrite", action="store_true")

    evaluate = commands.add_parser("evaluate", help="Dice and HD95 per case for each prompting method (Markdown)")
    evaluate.add_argument("--data", type=Path, required=True, help="folder with cases.csv, or NAME + NAME_seg files")
    evaluate.add_argument("--split", help="cases.csv split to evaluate, e.g. unseen")
    evaluate.add_argument("--site", help="site to evaluate")
    evaluate.add_argument("--cases", type=int, help="evaluate only the first N cases")
    evaluate.add_argument("--output", type=Path, help="also write the table to this Markdown file and its data to NAME.json")
    evaluate.add_argument("--shifts", action="store_true",
                          help="the robustness suite: every case clean and under each seeded acquisition shift (default cases: the "
                               "source-extra and unseen splits); Dice and HD95 per shift, and how well the confidence flags catch bad slices")
    evaluate.add_argument("--seed", type=_seed, default=0, help="--shifts: the seed of the random shifts (default 0)")
    evaluate.add_argument("--clicks", type=int, metavar="N",
                          help="simulate a user: up to N clicks per gland slice from the automatic result; Dice after 0-5 clicks and NoC@90 "
                               "for box-edit clicks (zero-shot) and the interactive decoder (default splits: unseen and source-extra)")
    evaluate.add_argument("--interactive-decoder", type=Path, help="--clicks: a decoder from train --method interactive (default: the shipped one)")
    evaluate.add_argument("--overwrite", action="store_true")
    _add_model_options(evaluate, default_method=None)

    train = commands.add_parser("train-coarse", help="train the coarse network on one source site")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--site", required=True, help="the source site, as in cases.csv's site column")
    train.add_argument("--output", type=Path, default=Path("runs/coarse"), help="folder for coarse.pt, coarse.json and the resume state")
    train.add_argument("--epochs", type=int, default=COARSE_TRAINING.epochs)
    train.add_argument("--batch-size", type=int, default=COARSE_TRAINING.batch_size)
    train.add_argument("--learning-rate", type=float, default=COARSE_TRAINING.learning_rate)
    train.add_argument("--seed", type=_seed, default=0)
    train.add_argument("--max-cases", type=int, help="use only the first N cases (quick trials)")
    train.add_argument("--resume", action="store_true", help="continue from the output folder's last completed epoch (refused if there is none)")
    train.add_argument("--overwrite", action="store_true", help="replace a run trained before in the output folder (refused otherwise)")
    train.add_argument("--augmentation", choices=("standard", "dg"), default="standard",
                       help="standard: the milder set (default); dg: domain-generalisation augmentations (GIN, strong bias fields, curves, resolution, flips)")
    train.add_argument("--initial-weights", type=Path, help="start from this coarse checkpoint's weights (same architecture)")
    train.add_argument("--input-representation", choices=COARSE_INPUT_REPRESENTATIONS, default=COARSE_INPUT_REPRESENTATION,
                       help=f"intensity: the normalised slice; log-contrast: log intensity over its 8 mm neighbourhood (cancels smooth fields and gamma); default {COARSE_INPUT_REPRESENTATION}, as shipped")
    train.add_argument("--context-mm", type=float, default=COARSE_CONTEXT_MM,
                       help=f"also read the volume this many mm below and above each slice (z context; default {COARSE_CONTEXT_MM}, as shipped; 0: the slice alone)")
    train.add_argument("--device", default="auto", choices=DEVICE_CHOICES)

    embed = commands.add_parser("embed", help="encode every source-site slice once into the embedding cache")
    _add_cache_options(embed)

    tune = commands.add_parser("train", help="fine-tune SAM on one source site from the embedding cache")
    trainable = trainable_methods()
    tune.add_argument("--method", choices=tuple(trainable), default=next(iter(trainable)),
                      help="; ".join(f"{key}: {item.title}" for key, item in trainable.items()))
    _add_cache_options(tune)
    tune.add_argument("--output", type=Path, help="folder for METHOD.pt, METHOD.json and the resume state (default runs/METHOD)")
    defaults = training_defaults()
    tune.add_argument("--epochs", type=int, help="default per method: " + ", ".join(f"{m} {d.epochs}" for m, d in defaults.items()))
    tune.add_argument("--learning-rate", type=float, help="default per method: " + ", ".join(f"{m} {d.learning_rate:g}" for m, d in defaults.items()))
    tune.add_argument("--batch-size", type=int, help="default per method: " + ", ".join(f"{m} {d.batch_size}" for m, d in defaults.items()))
    tune.add_argument("--seed", type=_seed, default=0)
    tune.add_argument("--resume", action="store_true", help="continue from the output folder's last completed epoch (refused if there is none)")
    tune.add_argument("--overwrite", action="store_true", help="replace a run trained before in the output folder (refused otherwise)")
    return parser


def _add_clinical_options(parser: argparse.ArgumentParser) -> None:
    """Volume, PSA density, DICOM series choice and SEG, report files (one volume, not a batch)."""
    parser.add_argument("--psa", type=float, metavar="NG_ML", help="serum PSA in ng/mL: also print and report the PSA density")
    parser.add_argument("--report", type=Path, metavar="REPORT.json", help="write the volume, diameters, PSA density and the method to this JSON file")
    parser.add_argument("--report-page", type=Path, metavar="REPORT.png|pdf", help="write a one-page report: slices with the contour, measurements, method and models")
    parser.add_argument("--dicom-seg", type=Path, metavar="SEG.dcm", help="DICOM input: write a DICOM Segmentation referencing the source series")
    parser.add_argument("--series-uid", help="DICOM input: segment this series (default: the axial T2 series, chosen by its DICOM attributes)")


def _add_cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--site", required=True, help="the source site, as in cases.csv's site column")
    parser.add_argument("--cache", type=Path, default=Path("runs/embeddings"), help="embedding cache folder")
    parser.add_argument("--max-cases", type=int, help="use only the first N cases (quick trials)")
    parser.add_argument("--augmented-copies", type=int, default=0, metavar="N",
                        help="also encode N copies of each case under seeded DG appearance augmentation (resolution, smooth fields, "
                        "curves, random convolutions, noise) and train on them with the originals; validation stays on the originals (default 0)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)


def _check_model_options(arguments) -> None:
    """The model options' values and files, before any volume is read or model loaded; sets ``arguments.method_model_entry``
    (the checked ``--method-model``, or None), which loading and provenance read."""
    _millimetres(margin_mm=arguments.margin_mm, z_smoothing_mm=arguments.z_smoothing_mm)
    if arguments.grid_points < 1:
        raise InputError("--grid-points must be at least 1")
    if arguments.method is not None:
        chosen = method(arguments.method)
        chosen.check_sam(arguments.sam_checkpoint is not None)
        if getattr(arguments, "merge_slices", False) and not chosen.takes_boxes:
            raise InputError(f"--method {arguments.method} prompts itself; --merge-slices works with {' and '.join(box_method_ids())}")
    if arguments.sam_type is not None and arguments.sam_checkpoint is None:
        raise InputError(f"--sam-type {arguments.sam_type} describes --sam-checkpoint; give the checkpoint (the shipped model is LiteMedSAM)")
    for option, path in (("--sam-checkpoint", arguments.sam_checkpoint), ("--coarse-checkpoint", arguments.coarse_checkpoint)):
        if path is not None and not path.is_file():
            raise InputError(f"{option} {path} not found" if not path.exists() else f"{option} {path} is not a file")
    arguments.method_model_entry = trained_model_file(arguments.method_model, arguments.method)


def _model_files(arguments) -> list[Path | None]:
    trained = [arguments.method_model, getattr(arguments, "interactive_decoder", None)]
    return [arguments.sam_checkpoint, arguments.coarse_checkpoint, *trained, *(path and manifest_beside(path) for path in trained)]


def _millimetres(**values: float) -> None:
    """Refuse an option value that is not a finite, non-negative number of millimetres."""
    for name, value in values.items():
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"--{name.replace('_', '-')} must be a number of millimetres, not negative")


def _seed(text: str) -> int:
    """A seed for numpy's generators (0 or more; a negative one failed minutes into a run)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive(**values: float | None) -> None:
    """Refuse a given option value that is not a positive number (``None``: not given)."""
    for name, value in values.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"--{name.replace('_', '-')} must be positive, not {value:g}")


def _base_segmenter(arguments):
    """The base models (coarse network + SAM) the options ask for."""
    from ..pipeline.segmenter import ProstateSegmenter

    options = ProposalOptions(
        component_filter=ComponentFilter(arguments.component_filter), margin_mm=arguments.margin_mm, z_smoothing_mm=arguments.z_smoothing_mm
    )
    coarse_options = CoarseOptions(reorient=arguments.reorient, n4=arguments.n4, tta=arguments.coarse_tta, slice_order=arguments.slice_order_check)
    return ProstateSegmenter.load(
        arguments.device, arguments.sam_type, arguments.sam_checkpoint, arguments.coarse_checkpoint, options,
        arguments.precision, coarse_options, arguments.backend, _note,
    )


def _method_segmenter(arguments):
    """The chosen method loaded onto the base models."""
    options = MethodOptions(arguments.grid_points, getattr(arguments, "merge_slices", False))
    return method(arguments.method).load(_base_segmenter(arguments), arguments.method_model_entry, options)


def _note(line: str) -> None:
    print(f"samprostate: {line}", file=sys.stderr)




def _volume_name(path: Path) -> str:
    from ..io.volume_io import VOLUME_SUFFIXES

    name = path.name or path.resolve().name  # "." names the folder it is
    return next((name[: -len(suffix)] for suffix in VOLUME_SUFFIXES if name.lower().endswith(suffix)), name)


def _batch_inputs(inputs: list[Path]) -> list[Path] | None:
    """The volumes of a batch (several inputs, or one folder of volume files); None for one volume. Hidden files (macOS's
    ``._NAME``, a killed run's partial outputs) are not volumes; a folder holding a DICOM series and volume files is refused."""
    from ..io.dicom_series import find_series
    from ..io.volume_io import VOLUME_SUFFIXES

    if len(inputs) == 1 and inputs[0].is_dir():
        folder = inputs[0]
        files = sorted(
            path for path in folder.iterdir()
            if path.name.lower().endswith(VOLUME_SUFFIXES) and not path.name.startswith(".") and not _volume_name(path).endswith("_seg")
        )
        if files and find_series(folder):
            raise InputError(f"{folder} holds a DICOM series and volume files ({', '.join(path.name for path in files[:3])}"
                             f"{', ...' if len(files) > 3 else ''}): point to a folder that holds one or the other")
        return files or None  # a folder without volume files is read as a DICOM series
    return inputs if len(inputs) > 1 else None


def run_segment(arguments) -> None:
    """Every path and volume is checked before any model loads; a refusal writes nothing."""
    from ..core.files import check_outputs
    from ..io.boxes_json import read_prompts
    from ..io.volume_io import check_label_geometry, check_label_suffix, read_volume, volume_files

    if arguments.boxes_in and not method(arguments.method).takes_boxes:
        raise InputError(f"--method {arguments.method} prompts itself; --boxes-in works with {' and '.join(box_method_ids())}")
    _check_model_options(arguments)
    batch = _batch_inputs(arguments.input)
    if batch is not None:
        _run_batch(batch, arguments)
        return
    from .clinical_outputs import check_clinical_options, read_dicom_input

    path, output = arguments.input[0], arguments.output
    outputs = [output, arguments.boxes_out, arguments.overlay, arguments.report, arguments.report_page, arguments.dicom_seg]
    check_outputs(filter(None, outputs), [*volume_files(path), arguments.boxes_in, *_model_files(arguments)], arguments.overwrite)
    check_clinical_options(arguments)
    check_label_suffix(output)
    dicom = read_dicom_input(path, arguments.series_uid) if path.is_dir() else None  # the axial T2 series, or --series-uid
    image = dicom.image if dicom is not None else read_volume(path)
    check_label_geometry(image, str(path), output)
    boxes, points = read_prompts(arguments.boxes_in, image) if arguments.boxes_in else (None, {})
    if points:
        _check_point_decoder(arguments, points)
    _segment_volume(_method_segmenter(arguments), path, image, boxes, output, arguments, dicom, points)


def _check_point_decoder(arguments, points: dict) -> None:
    """Points need a point-trained decoder: the interactive method's, or a user's SAM ViT with a method that keeps SAM's
    own decoder (the other shipped decoders were trained with boxes only; README: Click to segment)."""
    chosen = method(arguments.method)
    own_vit = arguments.sam_checkpoint is not None and (arguments.sam_type or "vit_b") != "litemedsam" and chosen.model_kind is None
    if arguments.merge_slices or not (own_vit or chosen.takes_points):
        slices = ", ".join(map(str, sorted(points)))
        raise InputError(f"{arguments.boxes_in} has points on slice(s) {slices}, but the {arguments.method} decoder was trained with boxes only"
                         f"{' (and --merge-slices takes boxes only)' if arguments.merge_slices else ''}: remove the points, or use "
                         "--method interactive or a point-trained SAM (--sam-checkpoint with --sam-type vit_b, vit_l or vit_h)")


def _run_batch(batch: list[Path], arguments) -> None:
    """Paths checked and volumes read before the models load; a volume that fails is reported and the rest go on."""
    from tqdm import tqdm

    from ..core.files import check_output_folder, check_outputs
    from ..io.volume_io import check_label_geometry, read_volume, volume_files

    if arguments.boxes_in or arguments.boxes_out or arguments.overlay:
        raise InputError("--boxes-in, --boxes-out and --overlay take one volume, not a batch")
    if any(value is not None for value in (arguments.psa, arguments.report, arguments.report_page, arguments.dicom_seg, arguments.series_uid)):
        raise InputError("--psa, --report, --report-page, --dicom-seg and --series-uid take one volume, not a batch")
    from ..io.volume_io import VOLUME_SUFFIXES

    folder = arguments.output
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; for a batch, -o is a folder")
    if not folder.exists() and folder.name.lower().endswith(VOLUME_SUFFIXES):
        raise InputError(f"-o {folder} names a file, but {len(batch)} volumes are given: for a batch, -o is the folder for their label volumes")
    outputs = {path: folder / f"{_volume_name(path)}.nii.gz" for path in batch}
    by_name: dict[str, list[Path]] = {}
    for path, output in outputs.items():  # casefold: one file on macOS and Windows
        by_name.setdefault(output.name.casefold(), []).append(path)
    same = next((paths for paths in by_name.values() if len(paths) > 1), None)
    if same:
        raise InputError(f"{same[0]} and {same[1]} would both be written as {folder / outputs[same[0]].name}: give the inputs distinct names")
    if folder.exists():
        check_outputs(outputs.values(), [*(file for path in batch for file in volume_files(path)), *_model_files(arguments)], arguments.overwrite)
    else:
        check_output_folder(next(parent for parent in folder.absolute().parents if parent.exists()))
    failed = []
    for path, output in list(outputs.items()):
        try:
            check_label_geometry(read_volume(path), str(path), output)
        except InputError as error:
            print(f"samprostate: error: {error}", file=sys.stderr)
            failed.append(path.name)
            del outputs[path]
    if outputs:
        segmenter = _method_segmenter(arguments)
        folder.mkdir(parents=True, exist_ok=True)
        for path, output in tqdm(outputs.items(), desc="volumes", file=sys.stderr):
            try:
                _segment_volume(segmenter, path, read_volume(path), None, output, arguments)
            except InputError as error:
                tqdm.write(f"samprostate: error: {error}", file=sys.stderr)
                failed.append(path.name)
            except Exception as error:  # noqa: BLE001 - e.g. out of memory on one large volume: the others still go on
                tqdm.write(f"samprostate: error: {path.name}: {type(error).__name__}: {error}", file=sys.stderr)
                failed.append(path.name)
    if failed:
        raise InputError(f"{len(failed)} of {len(batch)} volumes failed: {', '.join(failed)}")


def _segment_volume(segmenter, path: Path, image, boxes, output: Path, arguments, dicom=None, points=None) -> None:
    """Segment one read volume; write the label volume, boxes, overlay and clinical outputs together (all or nothing)."""
    from tqdm import tqdm

    from ..core.files import text_writer, write_files_atomically
    from ..io.boxes_json import boxes_text
    from ..io.overlay import overlay_sheet
    from ..io.volume_io import image_writer, label_image
    from ..masks.confidence import flagged_slices
    from .clinical_outputs import clinical_writers, input_warnings

    volume = segmenter.base.prepare(image)
    result = segmenter.segment(volume, boxes, points)
    labels, boxes, confidences = result.labels, result.boxes, result.confidences
    writers = {output: image_writer(label_image(labels, image))}
    if arguments.boxes_out:
        writers[arguments.boxes_out] = text_writer(boxes_text(boxes, image, confidences, points))
    if arguments.overlay:
        sheet = overlay_sheet(volume.normalised, labels, boxes)
        writers[arguments.overlay] = lambda temporary: sheet.save(temporary, format="PNG")
    measurements, clinical = clinical_writers(arguments, path, output, volume, labels, dicom)
    write_files_atomically(writers | clinical)
    tqdm.write(f"{output}: prostate on {int(labels.reshape(len(labels), -1).any(1).sum())} of {len(labels)} slices, {len(boxes)} boxes")
    flagged = flagged_slices(confidences)
    if flagged:
        tqdm.write(f"{output}: check slice(s) {', '.join(map(str, flagged))} first (0-based; SAM's predicted IoU or the mask's agreement with "
                   "the coarse network is low, the cross-section is small (apex, base), or the gland may go on past the segmented slices)")
    for warning in input_warnings(volume):
        tqdm.write(f"samprostate: warning: {path.name}: {warning}", file=sys.stderr)
    if not labels.any():
        tqdm.write(f"samprostate: warning: found no prostate in {path.name}; the label volume is empty", file=sys.stderr)
    for name, value in measurements.rows():
        print(f"  {name}: {value}")


def run_evaluate(arguments) -> None:
    from ..core.files import check_outputs, write_json, write_text_atomically
    from ..io.dataset import find_cases, find_cases_of_splits
    from .evaluation_options import CLICK_SPLITS, check_click_options

    if arguments.cases is not None and arguments.cases < 1:
        raise InputError("--cases must be at least 1")
    check_click_options(arguments)  # first: it says what --clicks takes instead of --method-model
    _check_model_options(arguments)
    if arguments.shifts:
        _run_robustness_suite(arguments)
        return
    if arguments.split or arguments.clicks is None:
        cases = find_cases(arguments.data, site=arguments.site, split=arguments.split or None)[: arguments.cases]
    else:
        cases = find_cases_of_splits(arguments.data, arguments.site, CLICK_SPLITS)[: arguments.cases]
    if arguments.output:
        inputs = [arguments.data / "cases.csv", *_model_files(arguments), *(path for case in cases for path in (case.image, case.mask))]
        check_outputs([arguments.output, arguments.output.with_suffix(".json")], inputs, arguments.overwrite)
    from .evaluation import evaluate, markdown_table, to_json  # after the checks: it imports MONAI (10 s)

    if arguments.clicks is not None:
        from .click_evaluation import run_from_arguments

        print(run_from_arguments(arguments, _base_segmenter(arguments), cases))
        return
    chosen = runnable_methods().values() if arguments.method is None else [method(arguments.method)]
    if arguments.sam_checkpoint is not None:  # the trained methods build on the shipped LiteMedSAM
        chosen = [item for item in chosen if item.model_kind is None]
    results = evaluate(_base_segmenter(arguments), cases, chosen, arguments.method_model_entry)
    table = markdown_table(results)
    print(table)
    if arguments.output:
        write_json(arguments.output.with_suffix(".json"), to_json(results), indent=1)
        write_text_atomically(arguments.output, table + "\n")


def _check_training_output(folder: Path, stem: str, arguments) -> None:
    """A training output folder: a folder (or not yet there) that can be written in; it is created only once training
    starts. A run trained there before (its STEM.pt, STEM.json or resume state) is continued with ``--resume`` or
    replaced with ``--overwrite``, never replaced unasked."""
    from ..core.files import check_output_folder

    if folder.exists() and not folder.is_dir():
        raise InputError(f"output {folder} is a file; training writes into a folder")
    check_output_folder(folder if folder.exists() else next(parent for parent in folder.absolute().parents if parent.exists()))
    if arguments.resume and arguments.overwrite:
        raise InputError("--resume continues the run in the output folder and --overwrite replaces it: choose one")
    previous = [name for name in (f"{stem}.pt", f"{stem}.json", RESUME_STATE) if (folder / name).exists()]
    if previous and not (arguments.resume or arguments.overwrite):
        raise InputError(f"{folder} holds a run trained before ({', '.join(previous)}): continue it with --resume, or replace it with --overwrite")


def _run_robustness_suite(arguments) -> None:
    from ..core.files import check_outputs, write_json, write_text_atomically
    from ..io.dataset import find_cases, find_cases_of_splits
    from .evaluation_options import SUITE_SPLITS

    outputs = [arguments.output, arguments.output.with_suffix(".json")] if arguments.output else []
    check_outputs(outputs, [arguments.data / "cases.csv", *_model_files(arguments)], arguments.overwrite)
    if arguments.split:
        cases = find_cases(arguments.data, site=arguments.site, split=arguments.split)[: arguments.cases]
    else:
        cases = find_cases_of_splits(arguments.data, arguments.site, SUITE_SPLITS)[: arguments.cases]
    check_outputs(outputs, [path for case in cases for path in (case.image, case.mask)], overwrite=True)  # no case file is an output
    from .robustness import markdown_table, run_suite  # after the checks: it imports MONAI (10 s)

    arguments.method = arguments.method or DEFAULT_METHOD
    result = run_suite(_method_segmenter(arguments), cases, arguments.seed)
    table = markdown_table(result)
    print(table)
    if arguments.output:
        write_json(outputs[1], result.to_json(), indent=1)
        write_text_atomically(arguments.output, table + "\n")


def run_train_coarse(arguments) -> None:
    from ..core.devices import pick_device
    from ..io.dataset import site_cases

    _positive(epochs=arguments.epochs, batch_size=arguments.batch_size, learning_rate=arguments.learning_rate, max_cases=arguments.max_cases)
    _millimetres(context_mm=arguments.context_mm)
    _check_training_output(arguments.output, "coarse", arguments)
    replaced = {(arguments.output / name).resolve() for name in ("coarse.pt", RESUME_STATE)}
    if arguments.initial_weights is not None and not arguments.initial_weights.is_file():
        raise InputError(f"--initial-weights {arguments.initial_weights} not found")
    if arguments.initial_weights is not None and arguments.initial_weights.resolve() in replaced:
        raise InputError(f"--initial-weights {arguments.initial_weights} would be replaced by this run's output: copy it out of "
                         f"{arguments.output} first, or choose another --output")
    site_cases(arguments.data, arguments.site)  # a wrong data folder or site is refused before MONAI's 10 s import
    from ..training.coarse import CoarseTrainingOptions, train_coarse_net

    options = CoarseTrainingOptions(
        data=arguments.data,
        site=arguments.site,
        output=arguments.output,
        epochs=arguments.epochs,
        batch_size=arguments.batch_size,
        learning_rate=arguments.learning_rate,
        seed=arguments.seed,
        resume=arguments.resume,
        max_cases=arguments.max_cases,
        augmentation=arguments.augmentation,
        initial_weights=arguments.initial_weights,
        input_representation=arguments.input_representation,
        context_mm=arguments.context_mm,
    )
    manifest = train_coarse_net(options, pick_device(arguments.device))
    print(f"best validation Dice {manifest['best_validation_dice']:.4f}; wrote {arguments.output / manifest['file']}")


def _source_cases(arguments):
    """The site's cases (the first --max-cases)."""
    from ..io.dataset import site_cases

    _positive(max_cases=arguments.max_cases)
    if arguments.augmented_copies < 0:
        raise InputError(f"--augmented-copies must be 0 or more, not {arguments.augmented_copies}")
    return site_cases(arguments.data, arguments.site)[: arguments.max_cases]


def _base_models(arguments):
    from ..pipeline.segmenter import ProstateSegmenter

    # training reads encode_features (torch fp32): no encoder backend to choose
    return ProstateSegmenter.load(arguments.device, precision="fp32", backend="torch")


def _cache_folder(segmenter, cases, arguments, grid: str, augmented=None) -> Path:
    """The cache folder of the base models on ``grid``, with every case encoded and the ``--augmented-copies`` of the
    ``augmented`` ones (default: all); those missing are encoded now."""
    from ..core.catalog import default_entry
    from ..training.embedding_cache import build_cache, cache_key

    folder = arguments.cache / cache_key(default_entry("sam").path, default_entry("coarse").path, grid)
    augmented = cases if augmented is None else augmented
    build_cache(segmenter, [case for case in cases if case not in augmented], folder, grid)
    build_cache(segmenter, augmented, folder, grid, arguments.augmented_copies)
    return folder


def run_embed(arguments) -> None:
    cases = _source_cases(arguments)
    from ..training.embedding_cache import ENCODER_GRIDS

    segmenter = _base_models(arguments)
    copies = f" with {arguments.augmented_copies} augmented copies each" if arguments.augmented_copies else ""
    for grid in ENCODER_GRIDS:
        print(f"{len(cases)} cases{copies} encoded on the {grid} grid in {_cache_folder(segmenter, cases, arguments, grid)}")


def run_train(arguments) -> None:
    from ..core.catalog import default_entry
    from ..io.dataset import require_zonal_masks

    _positive(epochs=arguments.epochs, learning_rate=arguments.learning_rate, batch_size=arguments.batch_size)
    trained = method(arguments.method)
    defaults = trained.training
    assert defaults is not None  # --method offers only trainable methods
    epochs = defaults.epochs if arguments.epochs is None else arguments.epochs
    learning_rate = defaults.learning_rate if arguments.learning_rate is None else arguments.learning_rate
    batch_size = defaults.batch_size if arguments.batch_size is None else arguments.batch_size
    output = arguments.output or Path("runs") / arguments.method
    _check_training_output(output, TRAINING_METHODS[arguments.method].output_stem, arguments)
    cases = _source_cases(arguments)  # a wrong data folder or site is refused before MONAI's 10 s import
    import torch

    from ..core.checksums import load_resume_state
    from ..training.coarse import require_validation, resumed_run, split_cases
    from ..training.embedding_cache import cache_files, load_cached_case, preprocessing
    from ..training.loop import RESUME_KEYS, TrainingOptions, fine_tuning_run, train

    training, validation = split_cases(cases, VALIDATION_FRACTION, arguments.seed)
    require_validation(training, validation, arguments.site)
    if trained.zonal:
        require_zonal_masks(cases, arguments.method)
    base, coarse = default_entry("sam"), default_entry("coarse")
    manifest = {
        "base_model": base.id,
        "base_sha256": base.sha256,
        "coarse_model": coarse.id,  # its boxes prompt the training slices (the embedding cache)
        "coarse_sha256": coarse.sha256,
        "data": str(arguments.data),
        "site": arguments.site,
        "training_cases": [case.name for case in training],
        "augmented_copies": arguments.augmented_copies,
        "validation_cases": [case.name for case in validation],
        "command": f"samprostate train --method {arguments.method} --data {arguments.data} --site {arguments.site} "
        f"--epochs {epochs} --learning-rate {learning_rate:g} --batch-size {batch_size} --seed {arguments.seed}"
        + (f" --max-cases {arguments.max_cases}" if arguments.max_cases else "")
        + (f" --augmented-copies {arguments.augmented_copies}" if arguments.augmented_copies else ""),
    }
    options = TrainingOptions(output, epochs, learning_rate, batch_size, arguments.seed, arguments.resume)
    if arguments.resume:  # before the models load and the cache is built (minutes): a state of another run is refused now
        state_path = output / RESUME_STATE
        state = load_resume_state(state_path, RESUME_KEYS)  # --epochs: checked by train(), which knows the method's schedule
        resumed_run(state, fine_tuning_run(arguments.method, options, manifest), state_path, epochs_fixed=False)
    segmenter = _base_models(arguments)
    torch.manual_seed(arguments.seed)  # the new layers' initial weights (DeSAM's mask module, SAMed's LoRA) follow --seed too
    trainer = trained.trainer(segmenter)
    folder = _cache_folder(segmenter, cases, arguments, trainer.encoder_grid, augmented=training)  # validation reads the originals only
    manifest |= {"device": str(segmenter.sam.device), "encoder_input": preprocessing(trainer.encoder_grid)["encoder_input"]}
    training_files = [path for case in training for path in cache_files(folder, case, arguments.augmented_copies)]
    manifest = train(
        arguments.method,
        trainer,
        [load_cached_case(path, trainer.cached_features) for path in training_files],
        [load_cached_case(cache_files(folder, case)[0], trainer.cached_features) for case in validation],
        options,
        manifest,
    )
    print(f"best validation Dice {manifest['best_validation_dice']:.4f}; wrote {output / manifest['file']}")


def run_bench(arguments) -> None:
    import time

    from ..core.devices import pick_device
    from ..core.files import check_outputs, write_json, write_text_atomically
    from ..io.dataset import find_cases
    from ..modeling.backends import candidates, every_pair
    from ..pipeline.segmenter import ProstateSegmenter
    from .bench import PARITY_SPLITS, benchmark, parity

    json_output = arguments.output.with_suffix(".json") if arguments.output else None
    if arguments.output and arguments.output.suffix != ".md":
        raise InputError("--output is the Markdown report (NAME.md); its JSON data goes beside it as NAME.json")
    if arguments.cases < 1:
        raise InputError("--cases must be at least 1")
    if arguments.rounds < 1:
        raise InputError("--rounds must be at least 1")
    if not 0 <= arguments.review_seconds <= 600:
        raise InputError("--review-seconds must be between 0 and 600")
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    device = pick_device(arguments.device)
    explicit = arguments.backend != "auto" or arguments.precision != "auto"
    wanted = candidates(arguments.backend, arguments.precision, device) if explicit else every_pair(device)
    if arguments.parity:
        cases = [case for split in PARITY_SPLITS for case in find_cases(arguments.data, split=split)]
    else:
        cases = find_cases(arguments.data, site=arguments.site, split=arguments.split)[: arguments.cases]
    if arguments.output:
        inputs = [arguments.data / "cases.csv", *(path for case in cases for path in (case.image, case.mask))]
        assert json_output is not None  # set whenever --output is
        check_outputs([arguments.output, json_output], inputs, arguments.overwrite)
    if arguments.parity:
        segmenter = ProstateSegmenter.load(arguments.device, backend="torch", precision="fp32")
        report, data = parity(segmenter, cases, wanted, log)
    else:
        started = time.perf_counter()
        segmenter = ProstateSegmenter.load(arguments.device, precision=arguments.precision, backend=arguments.backend, log=_note)
        report, data = benchmark(segmenter, cases, wanted, time.perf_counter() - started, arguments.backend, arguments.precision, log,
                                 arguments.review_seconds, arguments.rounds)
    print(report)
    if arguments.output:
        write_text_atomically(arguments.output, report + "\n")
        assert json_output is not None
        write_json(json_output, data, indent=1)


COMMANDS = {
    "segment": run_segment,
    "evaluate": run_evaluate,
    "train-coarse": run_train_coarse,
    "embed": run_embed,
    "train": run_train,
    "bench": run_bench,
}


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        COMMANDS[arguments.command](arguments)
    except InputError as error:
        print(f"samprostate: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
