"""The ``samprostate`` command: segment, evaluate, train-coarse."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from .boxes import ComponentFilter, ProposalOptions
from .devices import BACKEND_CHOICES, DEVICE_CHOICES, PRECISION_CHOICES
from .errors import INTERRUPTED, InputError
from .model_catalog import BOX_METHODS, DEFAULT_GRID_SIDE, METHODS, SAM_TYPES


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="where to run (default: cuda, then mps, then cpu)")
    parser.add_argument("--sam-checkpoint", type=Path, help="your own SAM checkpoint (default: the shipped LiteMedSAM)")
    parser.add_argument("--sam-type", choices=SAM_TYPES, help="architecture of --sam-checkpoint (default vit_b)")
    parser.add_argument("--coarse-checkpoint", type=Path, help="a coarse network from train-coarse (default: the shipped one)")
    parser.add_argument("--component-filter", choices=[item.value for item in ComponentFilter], default=ProposalOptions().component_filter.value,
                        help="keep the largest component in the volume (3d), per slice (2d, as SAMMed), or all (none)")
    parser.add_argument("--margin-mm", type=float, default=ProposalOptions().margin_mm, help="box margin around the coarse component (mm)")
    parser.add_argument("--method", choices=tuple(METHODS), default="zero-shot",
                        help="zero-shot SAM with coarse boxes; sammed: its decoder fine-tuned on RUNMC; desam-grid / desam-box: "
                             "DeSAM prompted by a point grid or the whole slice; samed: LoRA SAM, zonal labels (1 TZ, 2 PZ)")
    parser.add_argument("--grid-points", type=int, default=DEFAULT_GRID_SIDE, help="desam-grid: points per side of the grid (default 9)")
    _add_backend_options(parser)


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="the box-prompted image encoder's runtime: auto times the installed ones once on this machine and "
                             "keeps the fastest (never slower than torch fp32); openvino and onnxruntime run a graph exported "
                             "once and cached (CPU only; pip install 'samprostate-sdg[fast]')")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="the encoder's arithmetic: auto lets --backend auto measure fp32 and, on CPUs with native bfloat16 "
                             "(AVX512-BF16, AMX), bf16 (same Dice within 0.005, README)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samprostate", description="Prostate segmentation on T2 MRI: coarse network boxes prompt SAM.")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment a volume and write a label volume")
    segment.add_argument("input", type=Path, nargs="+",
                         help="a volume SimpleITK reads (nii, nii.gz, nrrd, mha) or a DICOM folder; several volumes, or a folder "
                              "of volume files, are segmented as a batch with the models loaded once")
    segment.add_argument("-o", "--output", type=Path, required=True,
                         help="label volume to write (1 = prostate; SAMed: 1 TZ, 2 PZ); for a batch, the folder for NAME.nii.gz")
    segment.add_argument("--boxes-out", type=Path, help="write the boxes used to this JSON file")
    segment.add_argument("--boxes-in", type=Path, help="segment with these (possibly edited) boxes instead of proposing them")
    segment.add_argument("--overlay", type=Path, help="write a PNG of several slices with outline and boxes")
    segment.add_argument("--overwrite", action="store_true", help="replace existing output files")
    segment.add_argument("--merge-slices", action="store_true",
                         help="encode four gland crops per encoder pass (SAMMed's merge): about twice as fast, but Dice lower "
                              "(by 0.028 on average on NCI-ISBI cases, README)")
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
    bench.add_argument("--output", type=Path, help="also write the report to this Markdown file")
    bench.add_argument("--overwrite", action="store_true")

    evaluate = commands.add_parser("evaluate", help="Dice and HD95 per case for each prompting method (Markdown)")
    evaluate.add_argument("--data", type=Path, required=True, help="folder with cases.csv, or NAME + NAME_seg files")
    evaluate.add_argument("--split", help="cases.csv split to evaluate, e.g. unseen")
    evaluate.add_argument("--site", help="site to evaluate")
    evaluate.add_argument("--cases", type=int, help="evaluate only the first N cases")
    evaluate.add_argument("--output", type=Path, help="also write the table to this Markdown file")
    evaluate.add_argument("--overwrite", action="store_true")
    _add_model_options(evaluate)

    train = commands.add_parser("train-coarse", help="train the coarse network on one source site")
    train.add_argument("--data", type=Path, required=True)
    train.add_argument("--site", required=True, help="the source site, as in cases.csv's site column")
    train.add_argument("--output", type=Path, default=Path("runs/coarse"), help="folder for coarse.pt, coarse.json and the resume state")
    train.add_argument("--epochs", type=int, default=24)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--learning-rate", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-cases", type=int, help="use only the first N cases (quick trials)")
    train.add_argument("--resume", action="store_true", help="continue from the output folder's last completed epoch")
    train.add_argument("--device", default="auto", choices=DEVICE_CHOICES)

    embed = commands.add_parser("embed", help="encode every source-site slice once into the embedding cache")
    _add_cache_options(embed)

    tune = commands.add_parser("train", help="fine-tune SAM on one source site from the embedding cache")
    tune.add_argument("--method", choices=TRAINING_DEFAULTS, default="sammed",
                      help="sammed: the mask decoder, prompted with coarse boxes; desam-grid / desam-box: DeSAM's decoupled "
                           "decoder with point or whole-slice prompts; samed: LoRA encoder + decoder for zonal labels")
    _add_cache_options(tune)
    tune.add_argument("--output", type=Path, help="folder for METHOD.pt, METHOD.json and the resume state (default runs/METHOD)")
    tune.add_argument("--epochs", type=int, help="default per method: " + ", ".join(f"{m} {d.epochs}" for m, d in TRAINING_DEFAULTS.items()))
    tune.add_argument("--learning-rate", type=float, help="default per method: " + ", ".join(f"{m} {d.learning_rate:g}" for m, d in TRAINING_DEFAULTS.items()))
    tune.add_argument("--batch-size", type=int, help="default per method: " + ", ".join(f"{m} {d.batch_size}" for m, d in TRAINING_DEFAULTS.items()))
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--resume", action="store_true")
    return parser


@dataclass(frozen=True)
class TrainingDefaults:
    epochs: int
    learning_rate: float
    batch_size: int


TRAINING_DEFAULTS = {
    "sammed": TrainingDefaults(8, 1e-4, 8),
    "desam-grid": TrainingDefaults(6, 3e-4, 4),  # two prompts per slice: 8 prompts a step
    "desam-box": TrainingDefaults(6, 3e-4, 8),
    "samed": TrainingDefaults(2, 1e-3, 2),
}


def _add_cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--site", required=True, help="the source site, as in cases.csv's site column")
    parser.add_argument("--cache", type=Path, default=Path("runs/embeddings"), help="embedding cache folder")
    parser.add_argument("--max-cases", type=int, help="use only the first N cases (quick trials)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)


def _segmenter(arguments):
    from .pipeline import ProstateSegmenter

    if arguments.margin_mm < 0:
        raise InputError("--margin-mm must not be negative")
    if arguments.grid_points < 1:
        raise InputError("--grid-points must be at least 1")
    options = ProposalOptions(component_filter=ComponentFilter(arguments.component_filter), margin_mm=arguments.margin_mm)
    return ProstateSegmenter.load(
        arguments.device, arguments.sam_type, arguments.sam_checkpoint, arguments.coarse_checkpoint, options, arguments.method,
        arguments.grid_points, arguments.precision, arguments.backend, _note,
    )


def _note(line: str) -> None:
    print(f"samprostate: {line}", file=sys.stderr)


VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _volume_name(path: Path) -> str:
    return next((path.name[: -len(suffix)] for suffix in VOLUME_SUFFIXES if path.name.endswith(suffix)), path.name)


def _batch_inputs(inputs: list[Path]) -> list[Path] | None:
    """The volumes of a batch (several inputs, or one folder of volume files); None for one volume."""
    if len(inputs) == 1 and inputs[0].is_dir():
        files = sorted(path for path in inputs[0].iterdir() if path.name.endswith(VOLUME_SUFFIXES) and not _volume_name(path).endswith("_seg"))
        return files or None  # a folder without volume files is read as a DICOM series
    return inputs if len(inputs) > 1 else None


def run_segment(arguments) -> None:
    from .volume_io import check_output_path

    if arguments.method not in BOX_METHODS and arguments.boxes_in:
        raise InputError(f"--method {arguments.method} prompts itself; --boxes-in works with {' and '.join(BOX_METHODS)}")
    batch = _batch_inputs(arguments.input)
    if batch is None:
        for path in filter(None, [arguments.output, arguments.boxes_out, arguments.overlay]):
            check_output_path(path, arguments.overwrite)
        _segment_volume(_segmenter(arguments), arguments.input[0], arguments.output, arguments)
        return
    if arguments.boxes_in or arguments.boxes_out or arguments.overlay:
        raise InputError("--boxes-in, --boxes-out and --overlay take one volume, not a batch")
    if arguments.output.exists() and not arguments.output.is_dir():
        raise InputError(f"{arguments.output} is a file; for a batch, -o is a folder")
    outputs = {path: arguments.output / f"{_volume_name(path)}.nii.gz" for path in batch}
    if len(set(outputs.values())) < len(outputs):
        raise InputError("two inputs have the same name; their outputs would overwrite each other")
    arguments.output.mkdir(parents=True, exist_ok=True)
    for output in outputs.values():
        check_output_path(output, arguments.overwrite)
    _segment_batch(_segmenter(arguments), outputs, arguments)


def _segment_batch(segmenter, outputs: dict[Path, Path], arguments) -> None:
    """Every volume with the loaded models; a volume that fails is reported and the rest go on."""
    from tqdm import tqdm

    failed = []
    for path, output in tqdm(outputs.items(), desc="volumes", file=sys.stderr):
        try:
            _segment_volume(segmenter, path, output, arguments)
        except InputError as error:
            print(f"samprostate: error: {error}", file=sys.stderr)
            failed.append(path.name)
    if failed:
        raise InputError(f"{len(failed)} of {len(outputs)} volumes failed: {', '.join(failed)}")


def _segment_volume(segmenter, path: Path, output: Path, arguments) -> None:
    from .boxes_json import read_boxes, write_boxes
    from .overlay import write_overlay
    from .volume_io import label_image, read_volume, write_image

    image = read_volume(path)
    boxes = read_boxes(arguments.boxes_in, image) if arguments.boxes_in else None
    volume = segmenter.prepare(image)
    if arguments.merge_slices and segmenter.automatic is None:
        from .tiling import segment_merged

        boxes = segmenter.propose_boxes(volume) if boxes is None else boxes
        labels = segment_merged(segmenter.sam, volume.normalised, boxes)
    elif segmenter.automatic is None:
        boxes = segmenter.propose_boxes(volume) if boxes is None else boxes
        labels = segmenter.segment_with_boxes(volume, boxes)
    else:
        labels, boxes = segmenter.segment_automatically(volume), {}
    write_image(label_image(labels, image), output)
    if arguments.boxes_out:
        write_boxes(arguments.boxes_out, boxes, image)
    if arguments.overlay:
        write_overlay(arguments.overlay, volume.normalised, labels, boxes)
    print(f"{output}: prostate on {int(labels.reshape(len(labels), -1).any(1).sum())} of {len(labels)} slices, {len(boxes)} boxes")
    if not labels.any():
        print(f"samprostate: warning: found no prostate in {path.name}; the label volume is empty", file=sys.stderr)


def run_evaluate(arguments) -> None:
    from .dataset import find_cases
    from .evaluation import evaluate, markdown_table
    from .files import write_text_atomically
    from .volume_io import check_output_path

    if arguments.output:
        check_output_path(arguments.output, arguments.overwrite)
    if arguments.cases is not None and arguments.cases < 1:
        raise InputError("--cases must be at least 1")
    cases = find_cases(arguments.data, site=arguments.site, split=arguments.split)[: arguments.cases]
    segmenter = _segmenter(arguments)
    trained_rows = arguments.sam_checkpoint is None and arguments.method == "zero-shot"  # trained methods build on LiteMedSAM
    table = markdown_table(evaluate(segmenter, cases, trained_rows))
    print(table)
    if arguments.output:
        write_text_atomically(arguments.output, table + "\n")


def run_train_coarse(arguments) -> None:
    from .coarse_training import CoarseTrainingOptions, train_coarse_net
    from .devices import pick_device

    if arguments.epochs < 1 or arguments.batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")
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
    )
    manifest = train_coarse_net(options, pick_device(arguments.device))
    print(f"best validation Dice {manifest['best_validation_dice']:.4f}; wrote {arguments.output / manifest['file']}")


def _source_cases(arguments):
    """The base models and the site's cases."""
    from .dataset import find_cases
    from .pipeline import ProstateSegmenter

    # training reads encode_features (torch fp32): no encoder backend to choose
    segmenter = ProstateSegmenter.load(arguments.device, precision="fp32", backend="torch")
    return segmenter, find_cases(arguments.data, site=arguments.site)[: arguments.max_cases]


def _cache_folder(segmenter, cases, arguments, grid: str) -> Path:
    """The cache folder of the base models on ``grid``, with every case encoded (those missing are encoded now)."""
    from .embedding_cache import build_cache, cache_key
    from .model_catalog import default_entry

    folder = arguments.cache / cache_key(default_entry("sam").path, default_entry("coarse").path, grid)
    build_cache(segmenter, cases, folder, grid)
    return folder


def run_embed(arguments) -> None:
    from .embedding_cache import ENCODER_GRIDS

    segmenter, cases = _source_cases(arguments)
    for grid in ENCODER_GRIDS:
        print(f"{len(cases)} cases encoded on the {grid} grid in {_cache_folder(segmenter, cases, arguments, grid)}")


def _fine_tuning_method(name: str, segmenter):
    if name == "sammed":
        from .sammed_training import SamMedMethod

        return SamMedMethod(segmenter.sam, segmenter.options)
    if name == "samed":
        from .samed_training import SAMedMethod

        return SAMedMethod(segmenter.sam)
    from .desam_training import DeSAMMethod

    return DeSAMMethod(segmenter.sam, name.removeprefix("desam-"))


def run_train(arguments) -> None:
    from .coarse_training import split_cases
    from .embedding_cache import load_cached_case, preprocessing
    from .model_catalog import default_entry
    from .training_loop import TrainingOptions, train

    defaults = TRAINING_DEFAULTS[arguments.method]
    epochs = arguments.epochs or defaults.epochs
    learning_rate = arguments.learning_rate or defaults.learning_rate
    batch_size = arguments.batch_size or defaults.batch_size
    if epochs < 1 or batch_size < 1 or learning_rate <= 0:
        raise InputError("--epochs and --batch-size must be at least 1 and --learning-rate positive")
    output = arguments.output or Path("runs") / arguments.method
    segmenter, cases = _source_cases(arguments)
    method = _fine_tuning_method(arguments.method, segmenter)
    folder = _cache_folder(segmenter, cases, arguments, method.encoder_grid)
    training, validation = split_cases(cases, 0.1, arguments.seed)
    base = default_entry("sam")
    manifest = {
        "base_model": base.id,
        "base_sha256": base.sha256,
        "data": str(arguments.data),
        "site": arguments.site,
        "training_cases": [case.name for case in training],
        "validation_cases": [case.name for case in validation],
        "device": str(segmenter.sam.device),
        "encoder_input": preprocessing(method.encoder_grid)["encoder_input"],
        "command": f"samprostate train --method {arguments.method} --data {arguments.data} --site {arguments.site} "
        f"--epochs {epochs} --learning-rate {learning_rate:g} --batch-size {batch_size} --seed {arguments.seed}",
    }
    options = TrainingOptions(output, epochs, learning_rate, batch_size, arguments.seed, arguments.resume)
    manifest = train(
        method,
        [load_cached_case(folder / f"{case.name}.pt", method.cached_features) for case in training],
        [load_cached_case(folder / f"{case.name}.pt", method.cached_features) for case in validation],
        options,
        manifest,
    )
    print(f"best validation Dice {manifest['best_validation_dice']:.4f}; wrote {output / manifest['file']}")


def run_bench(arguments) -> None:
    import json
    import time

    from .backends import candidates, every_pair
    from .bench import PARITY_SPLITS, benchmark, parity
    from .dataset import find_cases
    from .devices import pick_device
    from .files import write_text_atomically
    from .pipeline import ProstateSegmenter
    from .volume_io import check_output_path

    json_output = arguments.output.with_suffix(".json") if arguments.output else None
    if arguments.output:
        if arguments.output.suffix != ".md":
            raise InputError("--output is the Markdown report (NAME.md); its JSON data goes beside it as NAME.json")
        check_output_path(arguments.output, arguments.overwrite)
        check_output_path(json_output, arguments.overwrite)
    if arguments.cases < 1:
        raise InputError("--cases must be at least 1")
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    device = pick_device(arguments.device)
    explicit = arguments.backend != "auto" or arguments.precision != "auto"
    wanted = candidates(arguments.backend, arguments.precision, device) if explicit else every_pair(device)
    if arguments.parity:
        cases = [case for split in PARITY_SPLITS for case in find_cases(arguments.data, split=split)]
        segmenter = ProstateSegmenter.load(arguments.device, backend="torch", precision="fp32")
        report, data = parity(segmenter, cases, wanted, log)
    else:
        cases = find_cases(arguments.data, site=arguments.site, split=arguments.split)[: arguments.cases]
        started = time.perf_counter()
        segmenter = ProstateSegmenter.load(arguments.device, precision=arguments.precision, backend=arguments.backend, log=_note)
        report, data = benchmark(segmenter, cases, wanted, time.perf_counter() - started, arguments.backend, arguments.precision, log)
    print(report)
    if arguments.output:
        write_text_atomically(arguments.output, report + "\n")
        write_text_atomically(json_output, json.dumps(data, indent=1) + "\n")


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
