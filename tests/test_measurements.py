"""Gland volume, diameters, ellipsoid volume, PSA density and volume agreement on real reference masks."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FIXTURES
from SAMProstateSDGLib.apps.volume_agreement import agreement
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.io.dataset import canonical_zones
from SAMProstateSDGLib.io.measurements import ellipsoid_volume_ml, labels_from_segments, measure, measure_image, voxel_to_patient


def _reference(name: str) -> tuple[sitk.Image, np.ndarray]:
    mask = sitk.ReadImage(str(FIXTURES / f"{name}_seg.nii.gz"))
    return mask, sitk.GetArrayFromImage(mask)


@pytest.mark.parametrize("name", ["Case00", "Case29", "P158-020"])
def test_volume_is_voxel_count_times_voxel_volume(name):
    mask, labels = _reference(name)
    measured = measure_image(labels, mask, zonal=True)
    voxel_ml = np.prod(mask.GetSpacing()) / 1000
    assert measured.volume_ml == pytest.approx((labels > 0).sum() * voxel_ml, rel=1e-6)
    assert sum(measured.zone_volumes_ml.values()) == pytest.approx(measured.volume_ml, rel=1e-6)


def test_measurements_do_not_depend_on_how_the_voxels_are_stored():
    """The same real mask stored with permuted and flipped axes (same physical gland) measures the same."""
    mask, labels = _reference("Case29")  # oblique: its direction is 4° off the patient axes
    reordered = sitk.Flip(sitk.PermuteAxes(mask, [1, 0, 2]), [True, False, True])
    original = measure_image(labels, mask)
    other = measure_image(sitk.GetArrayFromImage(reordered), reordered)
    assert other.volume_ml == pytest.approx(original.volume_ml, rel=1e-6)
    for diameter in ("transverse_mm", "anteroposterior_mm", "craniocaudal_mm"):
        assert getattr(other, diameter) == pytest.approx(getattr(original, diameter), rel=1e-6)


def test_diameters_of_a_box_are_its_physical_extents():
    """A 20 × 10 × 6 voxel block at 0.5 × 0.8 × 3 mm spacing: 10 mm L-R, 8 mm A-P, 18 mm S-I."""
    labels = np.zeros((10, 40, 40), np.uint8)
    labels[2:8, 5:15, 10:30] = 1
    image = sitk.Image(40, 40, 10, sitk.sitkUInt8)
    image.SetSpacing((0.5, 0.8, 3.0))
    measured = measure_image(labels, image, psa_ng_ml=2.0)
    assert (measured.transverse_mm, measured.anteroposterior_mm, measured.craniocaudal_mm) == pytest.approx((10.0, 8.0, 18.0))
    assert measured.volume_ml == pytest.approx(10 * 8 * 18 / 1000)
    assert measured.ellipsoid_volume_ml == pytest.approx(math.pi / 6 * 10 * 8 * 18 / 1000)
    assert measured.psa_density == pytest.approx(2.0 / measured.volume_ml)


def test_transverse_and_anteroposterior_come_from_the_largest_axial_section():
    """A small slice far off to the side does not widen the transverse diameter; it lengthens the craniocaudal one."""
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[1:4, 10:20, 10:20] = 1
    labels[5, 12:14, 30:38] = 1
    image = sitk.Image(40, 40, 6, sitk.sitkUInt8)
    measured = measure_image(labels, image)
    assert measured.transverse_mm == pytest.approx(10.0) and measured.anteroposterior_mm == pytest.approx(10.0)
    assert measured.craniocaudal_mm == pytest.approx(5.0)


def test_slicer_ras_matrix_gives_the_same_numbers_as_lps():
    mask, labels = _reference("P158-020")
    lps = voxel_to_patient(mask)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    assert measure(labels, ras, zonal=True) == measure(labels, lps, zonal=True)


def test_segments_as_slicer_holds_them_measure_like_the_label_volume():
    mask, labels = _reference("Case29")
    zones = canonical_zones(labels)
    matrix = voxel_to_patient(mask)
    by_name = {"transition zone": zones == 1, "urethra": zones > 0, "peripheral zone": zones == 2}  # the zones, and the user's own
    labels, zonal = labels_from_segments(by_name)
    assert zonal and measure(labels, matrix, zonal, 3.0) == measure(zones, matrix, zonal=True, psa_ng_ml=3.0)
    labels, zonal = labels_from_segments({"my gland": zones > 0})
    assert not zonal and measure(labels, matrix) == measure(zones > 0, matrix)
    with pytest.raises(InputError, match=r"holds 2 segments \(prostate, rectum\)"):
        labels_from_segments({"prostate": zones > 0, "rectum": zones == 0})


def test_empty_mask_reports_zero_volume_and_null_values_never_nan():
    mask, labels = _reference("Case00")
    measured = measure_image(np.zeros_like(labels), mask, psa_ng_ml=5.0)
    assert measured.volume_ml == 0 and measured.ellipsoid_volume_ml is None and measured.psa_density is None
    text = json.dumps(measured.to_json(), allow_nan=False)
    assert json.loads(text)["diameters_mm"]["transverse"] is None and "NaN" not in text


@pytest.mark.parametrize("psa", [0.0, -1.0, float("nan"), float("inf")])
def test_refuses_a_psa_that_is_not_a_positive_number(psa):
    mask, labels = _reference("Case00")
    with pytest.raises(InputError, match="PSA"):
        measure_image(labels, mask, psa_ng_ml=psa)


def test_ellipsoid_formula_and_agreement_statistics():
    assert ellipsoid_volume_ml(50, 40, 45) == pytest.approx(math.pi / 6 * 90.0)
    result = agreement([11.0, 18.0, 33.0], [10.0, 20.0, 30.0])
    assert result.mean_absolute_percent_error == pytest.approx(10.0)
    assert result.bias_ml == pytest.approx(2 / 3)
    spread = 1.96 * np.std([1.0, -2.0, 3.0], ddof=1)
    assert result.limits_ml == pytest.approx((2 / 3 - spread, 2 / 3 + spread))
    assert result.bias_percent == pytest.approx(10 / 3)
