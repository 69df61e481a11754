"""The benchmark's paths and baselines on a real fixture volume (timings are printed, never asserted)."""

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FIXTURES
from SAMProstateSDGLib.apps.bench import STAGES, _report, box_proposal_speedup, plain_engine, python_bfs_boxes, run_path
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.masks.boxes import ComponentFilter, filtered_mask


def test_python_bfs_baseline_finds_the_same_largest_components(segmenter):
    case = find_cases(FIXTURES)[0]
    ours_ms, python_ms, same = box_proposal_speedup(segmenter, case)
    assert same and ours_ms > 0 and python_ms > 0
    mask = np.zeros((1, 9, 9), dtype=bool)
    mask[0, 1:3, 1:3] = True  # 4 pixels
    mask[0, 5:8, 4:8] = True  # 12 pixels: the largest
    mask[0, 3, 3] = True  # touches the first only diagonally
    (box,) = python_bfs_boxes(mask).values()
    assert box.as_tuple() == (4.0, 5.0, 7.0, 7.0)
    assert filtered_mask(mask.astype(float), 0.5, ComponentFilter.SLICE).sum() == 12


@pytest.fixture(scope="module")
def plain(segmenter):
    return plain_engine(segmenter)


def test_every_path_times_every_stage_and_the_fast_paths_keep_the_dice(segmenter, plain, tmp_path):
    fixture = next(case for case in find_cases(FIXTURES) if case.name == "P158-020")
    for source, target in ((fixture.image, tmp_path / "image.nii.gz"), (fixture.mask, tmp_path / "mask.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(source))[:, :, 1:3], str(target))  # two of its four slices: each path encodes every slice
    case = replace(fixture, image=tmp_path / "image.nii.gz", mask=tmp_path / "mask.nii.gz")
    paths = ("naive", "torch fp32", "merged")  # bf16's rounding: test_sam_engine
    results = {path: run_path(segmenter, case, path, tmp_path, plain) for path in paths}
    for path, (timing, labels) in results.items():
        assert set(timing.seconds) == set(STAGES) and timing.slices == len(labels)
        assert (tmp_path / f"P158-020_{path.replace(' ', '_')}.nii.gz").is_file()
    naive, fast = results["naive"][1], results["torch fp32"][1]
    assert np.array_equal(naive, fast)  # the fast encoder, on boxed slices only, changes nothing
    assert results["merged"][0].dice > results["torch fp32"][0].dice - 0.03  # merging may only cost little
    assert segmenter.sam.encoder_backend.label == "torch fp32"  # each path restores the engine's encoder
    process = {"cold_seconds": 12.0, "warm_seconds": 8.0, "load_seconds": 2.0, "process_peak_mb": 1200.0}
    report = _report({path: [timing] for path, (timing, _) in results.items()}, 50.0, {False: 9.0, True: 3.0}, 1.0, 200.0, True, 900.0, "cpu", process)
    assert "| **total** |" in report and "speed-up vs naive" in report and "200×" in report and "(3.0×)" in report
    assert "| Stage | naive | torch fp32 | merged |" in report and "cold / warm 1.50×" in report


def test_peak_memory_is_read_in_the_unit_of_each_platform():
    """ru_maxrss is kB on Linux (checked against the kernel's VmHWM) and bytes on macOS."""
    import re
    from pathlib import Path

    from SAMProstateSDGLib.apps.bench import peak_resident_mb

    linux = peak_resident_mb(platform="linux")
    high_water_kb = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(encoding="utf-8")).group(1))
    assert abs(linux - high_water_kb / 1024) < 0.05 * linux + 8
    assert peak_resident_mb(platform="darwin") == pytest.approx(linux / 1024, rel=0.05)


def test_a_child_process_peak_is_its_own_not_the_benchmark_processes():
    """Linux keeps the high-water mark across exec: a plain child of a 400 MB process would report 400 MB."""
    import subprocess
    import sys

    from SAMProstateSDGLib.apps.bench import run_with_peak_memory

    pytest.importorskip("resource")
    large = b"x" * (400 << 20)  # this process's peak is now over 400 MB
    del large
    child = run_with_peak_memory([sys.executable, "-c", "data = b'x' * (100 << 20)"])
    assert 100 < child < 400
    with pytest.raises(subprocess.CalledProcessError):
        run_with_peak_memory([sys.executable, "-c", "raise SystemExit(3)"])


def test_the_report_is_rendered_from_the_json_data_of_its_run():
    """The committed bench run (README, Speed): its own machine line, not this machine's, and its recorded figures."""
    import json

    from conftest import ROOT
    from SAMProstateSDGLib.apps.bench import markdown_report

    data = json.loads((ROOT / "results" / "bench.json").read_text())
    report = markdown_report(data | {"machine": "the benchmarked machine"})
    assert report.startswith("Machine: the benchmarked machine, device cpu, --backend auto --precision auto chose openvino fp32; 1 volumes")
    assert "| speed-up vs naive | 1.00× | 1.61× | 1.75× | 4.23× |" in report and "One click" not in report
    clicked = markdown_report(data | {"click_update_ms": 81.4, "backend": "openvino", "precision": "bf16"})
    assert "--backend openvino --precision bf16 chose" in clicked and "previous mask; cached embedding, decoder only): median 81 ms\n\n| Encoder variant" in clicked
