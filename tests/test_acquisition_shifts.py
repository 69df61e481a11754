"""The robustness suite's acquisition shifts, on the real 4-slice fixtures."""

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import FIXTURES
from SAMProstateSDGLib.apps.acquisition_shifts import (
    SHIFTS,
    coil_field,
    coverage_above,
    endorectal_coil,
    flipped_axes,
    gamma_contrast,
    identity_header,
    resample,
    reversed_slice_order,
    rician_noise,
    select_shifts,
    shifted_case,
    smooth_bias_field,
    tight_coverage,
)
from SAMProstateSDGLib.core.errors import InputError


def _case(name: str = "Case29") -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(FIXTURES / f"{name}.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / f"{name}_seg.nii.gz"))).astype(np.uint8)
    return image, labels


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _voxels(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float32)


def _posterior_anterior_gland(image: sitk.Image, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the gland's posterior and anterior halves (LPS: rows grow posterior on these LPS fixtures)."""
    gland = labels > 0
    rows = np.nonzero(gland)[1]
    middle = np.median(rows)
    row_index = np.arange(gland.shape[1])[None, :, None]
    return gland & (row_index > middle), gland & (row_index <= middle)


@pytest.mark.parametrize("name", ["Case29", "P158-020"])
def test_coil_field_is_bright_behind_the_gland_and_dark_in_front(name):
    image, labels = _case(name)
    posterior, anterior = _posterior_anterior_gland(image, labels)
    field = coil_field(image, labels)
    assert field[posterior].mean() > 2.0 * field[anterior].mean()
    # behind the gland (the rectum) brighter still than the gland's posterior half
    gland_rows = np.nonzero(labels > 0)[1]
    assert field[:, gland_rows.max() + 5].max() > field[posterior].mean()
    shifted, same_labels = endorectal_coil(image, labels, _rng())
    assert same_labels is labels
    original, shaded = _voxels(image), _voxels(shifted)
    before = original[posterior].mean() / original[anterior].mean()
    after = shaded[posterior].mean() / shaded[anterior].mean()
    assert after > 1.8 * before
    # the receiver saturates: the brightest voxels are clipped to one value
    assert (shaded == shaded.max()).sum() >= 0.005 * shaded.size


def test_header_variants_keep_the_voxels_and_change_the_geometry():
    image, labels = _case("Case29")
    plain, plain_labels = identity_header(image, labels, _rng())
    np.testing.assert_array_equal(_voxels(plain), _voxels(image))
    assert plain_labels is labels
    assert plain.GetDirection() == tuple(np.eye(3).ravel()) and plain.GetOrigin() == (0.0, 0.0, 0.0)
    assert image.GetDirection() != plain.GetDirection()

    flipped, flipped_labels = flipped_axes(image, labels, _rng())
    np.testing.assert_array_equal(_voxels(flipped), _voxels(image)[::-1, ::-1])
    np.testing.assert_array_equal(flipped_labels, labels[::-1, ::-1])
    # the patient stays where he was: each voxel's physical point holds the same value
    for index in [(10, 20, 0), (100, 200, 3), (383, 0, 2)]:
        point = image.TransformIndexToPhysicalPoint(index)
        assert flipped[flipped.TransformPhysicalPointToIndex(point)] == image[index]
    # so reorienting both to LPS gives the same array
    np.testing.assert_array_equal(_voxels(sitk.DICOMOrient(flipped, "LPS")), _voxels(sitk.DICOMOrient(image, "LPS")))

    mislabelled, mislabelled_labels = reversed_slice_order(image, labels, _rng())
    np.testing.assert_array_equal(_voxels(mislabelled), _voxels(image)[::-1])
    np.testing.assert_array_equal(mislabelled_labels, labels[::-1])
    # the header is the file's: the first slice's point now holds the last slice's voxels
    assert (mislabelled.GetOrigin(), mislabelled.GetDirection(), mislabelled.GetSpacing()) == (image.GetOrigin(), image.GetDirection(), image.GetSpacing())


def test_resampling_gives_the_requested_spacing_and_keeps_the_gland():
    image, labels = _case("P158-020")
    resampled, resampled_labels = resample(image, labels, (1.1, 1.1, 1.6))
    assert resampled.GetSpacing() == pytest.approx((1.1, 1.1, 1.6))
    assert resampled_labels.shape == _voxels(resampled).shape
    volume = lambda mask, spacing: (mask > 0).sum() * np.prod(spacing)  # noqa: E731
    assert volume(resampled_labels, resampled.GetSpacing()) == pytest.approx(volume(labels, image.GetSpacing()), rel=0.15)
    # the field of view is kept: the centre stays in place
    centre = lambda im: np.array(im.TransformContinuousIndexToPhysicalPoint(((np.array(im.GetSize()) - 1) / 2).tolist()))  # noqa: E731
    np.testing.assert_allclose(centre(resampled), centre(image), atol=1e-3)


def test_z_coverage_crops_keep_the_gland():
    image, labels = _case("Case29")
    padded_labels = np.concatenate([np.zeros_like(labels[:2]), labels, np.zeros_like(labels[:2])])
    voxels = _voxels(image)
    padded = sitk.GetImageFromArray(np.concatenate([voxels[:1], voxels[:1], voxels, voxels[-1:], voxels[-1:]]))
    padded.SetSpacing(image.GetSpacing())
    padded.SetDirection(image.GetDirection())
    padded.SetOrigin(image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, -2.0)))
    above, above_labels = coverage_above(padded, padded_labels, _rng())
    assert above.GetSize()[2] == len(above_labels) == 7  # one slice below the gland, all above kept
    tight, tight_labels = tight_coverage(padded, padded_labels, _rng())
    assert len(tight_labels) == 6 and (tight_labels > 0).sum() == (padded_labels > 0).sum()


def test_intensity_shifts_change_the_voxels_as_documented():
    image, labels = _case("Case29")
    original = _voxels(image)
    biased = _voxels(smooth_bias_field(image, labels, _rng())[0])
    ratio = biased[original > 50] / original[original > 50]
    assert ratio.min() > 0 and ratio.max() / ratio.min() > 2.0  # a strong multiplicative field
    noisy = _voxels(rician_noise(image, labels, _rng())[0])
    assert noisy.min() >= 0 and np.std(noisy - original) > 0.05 * np.percentile(original, 99)
    curved = _voxels(gamma_contrast(image, labels, _rng())[0])
    sample = np.random.default_rng(1).choice(original.size, 2000, replace=False)
    order = np.argsort(original.ravel()[sample], kind="stable")
    assert np.all(np.diff(curved.ravel()[sample][order]) >= -1e-3)  # monotone: the tissue order is kept
    assert not np.allclose(curved, original, rtol=0.05)


def test_shifts_are_deterministic_per_seed_and_case():
    image, labels = _case("Case29")
    for shift in SHIFTS:
        first, first_labels = shifted_case(shift, image, labels, 0, "Case29")
        second, second_labels = shifted_case(shift, image, labels, 0, "Case29")
        np.testing.assert_array_equal(_voxels(first), _voxels(second))
        np.testing.assert_array_equal(first_labels, second_labels)
        assert first.GetSpacing() == second.GetSpacing() and first.GetOrigin() == second.GetOrigin()
        assert first_labels.shape == _voxels(first).shape
    noise = next(shift for shift in SHIFTS if shift.name == "Rician noise")
    assert not np.array_equal(_voxels(shifted_case(noise, image, labels, 0, "Case29")[0]), _voxels(shifted_case(noise, image, labels, 1, "Case29")[0]))
    assert all(shift.description for shift in SHIFTS)


def test_select_shifts_by_name_or_unique_start_in_suite_order():
    chosen = select_shifts(["strong bias", "ENDORECTAL COIL", "coil site"])
    assert [shift.name for shift in chosen] == [SHIFTS[0].name, SHIFTS[1].name, SHIFTS[2].name]
    assert select_shifts([SHIFTS[5].name]) == (SHIFTS[5],)
    with pytest.raises(InputError, match="not one of"):
        select_shifts(["motion"])
    with pytest.raises(InputError, match="matches several"):
        select_shifts(["co"])  # coil site, coarser pixels
