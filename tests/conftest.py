"""Shared fixtures: the real prostate data beside the project and the real shipped models."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SAMPROSTATE_DATA", ROOT.parent / "shared" / "data" / "prostate"))
FIXTURES = DATA / "fixture"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# exported encoders and the backend choice are cached here, not in the user's cache folder
os.environ.setdefault("SAMPROSTATE_CACHE_DIR", str(ROOT / ".pytest_cache" / "samprostate"))


SAMPROSTATE = Path(sys.executable).with_name("samprostate")


def samprostate(*arguments, check: bool = True) -> subprocess.CompletedProcess:
    """``samprostate ARGUMENTS`` in this process (``main``): the parsing, checks, models and files of the installed command
    without a new interpreter's 8-10 s of imports. ``samprostate_process`` runs the installed command itself."""
    from SAMProstateSDGLib.apps.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(argument) for argument in arguments])
        except SystemExit as exit:  # argparse: --help, --version, a usage error
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    result = subprocess.CompletedProcess(["samprostate", *map(str, arguments)], code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        raise AssertionError(result.stderr)
    return result


def samprostate_process(*arguments, check: bool = True) -> subprocess.CompletedProcess:
    """The installed ``samprostate`` command as a new process, as a user runs it."""
    result = subprocess.run([str(SAMPROSTATE), *map(str, arguments)], capture_output=True, encoding="utf-8")
    if check and result.returncode != 0:
        raise AssertionError(result.stderr)
    return result


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def read_mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def assert_boxes_near_the_reference(boxes: dict, reference: np.ndarray, spacing_xy: tuple[float, float]) -> None:
    """Proposed boxes ({slice: Box}) against the reference mask's bounding boxes widened by the default margin (so the
    coarse network's own edge error is measured): every edge within 15 mm on the slices both have (apex and base are
    hard), and half of all edges within 3 mm."""
    from SAMProstateSDGLib.masks.boxes import ProposalOptions, component_boxes

    millimetres = np.array([spacing_xy[0], spacing_xy[1]] * 2)
    expected = component_boxes(reference > 0, spacing_xy, ProposalOptions().margin_mm)
    both = sorted(boxes.keys() & expected.keys())
    assert len(both) >= 0.8 * len(expected), (sorted(boxes), sorted(expected))
    errors = np.abs([(np.array(boxes[index].as_tuple()) - expected[index].as_tuple()) * millimetres for index in both])
    assert errors.max() <= 15.0 and np.median(errors) <= 3.0, np.round(errors, 1)


@pytest.fixture(scope="session")
def data() -> Path:
    if not (DATA / "cases.csv").is_file():
        pytest.fail(f"the prostate data is missing at {DATA} (set SAMPROSTATE_DATA)")
    return DATA


def cut_data_folder(folder: Path, images: dict[str, Path], cut, site: str, split: str) -> Path:
    """A data folder (cases.csv) of the cases ``images`` (name -> image beside its NAME_seg mask), each volume cut to the
    slices ``cut(depth)`` (a slice object) picks, as ``site`` and ``split``."""
    rows = ["case,site,split,image,mask"]
    for name, image in images.items():
        for source, suffix in ((image, ""), (image.with_name(f"{name}_seg.nii.gz"), "_seg")):
            volume = sitk.ReadImage(str(source))
            sitk.WriteImage(volume[:, :, cut(volume.GetSize()[2])], str(folder / f"{name}{suffix}.nii.gz"))
        rows.append(f"{name},{site},{split},{name}.nii.gz,{name}_seg.nii.gz")
    (folder / "cases.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def small_runmc(data, tmp_path_factory) -> Path:
    """Two RUNMC cases (Case00, Case01), each cut to its four middle slices, as site "RUNMC": what the training-process
    tests train on, an epoch in about a second instead of ten."""
    images = {name: data / "RUNMC" / f"{name}.nii.gz" for name in ("Case00", "Case01")}
    return cut_data_folder(tmp_path_factory.mktemp("small_runmc"), images, lambda depth: slice(depth // 2 - 2, depth // 2 + 2), "RUNMC", "source")


@pytest.fixture(scope="session")
def mislabelled_case(data, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """P158-021 with its slices stored head to feet under its feet-to-head header (the suite's shift
    ``reversed_slice_order``), written as reversed.nii.gz, and its reference reversed the same way."""
    from SAMProstateSDGLib.apps.acquisition_shifts import reversed_slice_order

    image, reference = sitk.ReadImage(str(data / "Prostate158" / "P158-021.nii.gz")), read_mask(data / "Prostate158" / "P158-021_seg.nii.gz")
    mislabelled, mislabelled_reference = reversed_slice_order(image, reference, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("mislabelled") / "reversed.nii.gz"
    sitk.WriteImage(mislabelled, str(path))
    return path, mislabelled_reference


@pytest.fixture(scope="session")
def sam_engine():
    from SAMProstateSDGLib.core.catalog import default_entry
    from SAMProstateSDGLib.modeling.sam_engine import SamEngine, load_sam

    entry = default_entry("sam")
    return SamEngine(load_sam(entry.model_type, entry.path, entry.sha256), torch.device("cpu"))


@pytest.fixture(scope="session")
def segmenter(sam_engine):
    from SAMProstateSDGLib.core.catalog import default_entry
    from SAMProstateSDGLib.modeling.coarse_net import CoarseSegmenter
    from SAMProstateSDGLib.pipeline.segmenter import ProstateSegmenter

    entry = default_entry("coarse")
    return ProstateSegmenter(sam_engine, CoarseSegmenter.from_checkpoint(entry.path, torch.device("cpu"), entry.sha256))
