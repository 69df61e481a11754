"""Localisation levers: the plausible component choice, reorientation and the slice-order check, on real cases."""

import numpy as np
import SimpleITK as sitk

from conftest import DATA, FIXTURES, dice, read_mask
from SAMProstateSDGLib.apps.acquisition_shifts import flipped_axes, reversed_slice_order
from SAMProstateSDGLib.io.volume_io import read_volume
from SAMProstateSDGLib.masks.boxes import CoarseOptions, ComponentFilter, ProposalOptions, filtered_mask, propose_boxes
from SAMProstateSDGLib.masks.component_choice import choose_component, component_features
from SAMProstateSDGLib.pipeline.localisation import coarse_probabilities, coarse_reading


def test_reorienting_gives_a_flipped_file_the_same_probabilities(segmenter):
    image = read_volume(FIXTURES / "P158-020.nii.gz")
    reference = read_mask(FIXTURES / "P158-020_seg.nii.gz")
    flipped, flipped_reference = flipped_axes(image, reference.astype(np.uint8), np.random.default_rng(0))
    stored = coarse_probabilities(segmenter.coarse, image, CoarseOptions(reorient=True))
    reoriented = coarse_probabilities(segmenter.coarse, flipped, CoarseOptions(reorient=True))
    np.testing.assert_allclose(reoriented, stored[::-1, ::-1], atol=1e-4)
    assert dice(reoriented > 0.75, flipped_reference) > 0.75
    as_stored = coarse_probabilities(segmenter.coarse, flipped, CoarseOptions())
    assert dice(as_stored > 0.75, flipped_reference) < dice(reoriented > 0.75, flipped_reference) - 0.1  # upside down, the net fails


def test_the_slice_order_check_reads_a_file_whose_header_states_the_wrong_slice_direction(segmenter):
    """P158-021 with its slices stored head to feet under the header's feet-to-head direction: the z-context
    network reads the apex where the base should be; the check reads it in the order it is more certain in."""
    image = read_volume(DATA / "Prostate158" / "P158-021.nii.gz")
    reference = read_mask(DATA / "Prostate158" / "P158-021_seg.nii.gz").astype(np.uint8)
    mislabelled, mislabelled_reference = reversed_slice_order(image, reference, np.random.default_rng(0))
    checked = CoarseOptions(reorient=True, slice_order=True)
    stored = coarse_probabilities(segmenter.coarse, image, CoarseOptions(reorient=True))
    np.testing.assert_array_equal(coarse_probabilities(segmenter.coarse, image, checked), stored)  # a right header changes nothing
    read_in_checked_order = coarse_probabilities(segmenter.coarse, mislabelled, checked)
    np.testing.assert_allclose(read_in_checked_order, stored[::-1], atol=1e-4)
    header_order = coarse_probabilities(segmenter.coarse, mislabelled, CoarseOptions(reorient=True))
    gland = filtered_mask(read_in_checked_order, component_filter=ComponentFilter.VOLUME, spacing_xyz=image.GetSpacing())
    gland_header_order = filtered_mask(header_order, component_filter=ComponentFilter.VOLUME, spacing_xyz=image.GetSpacing())
    assert dice(gland_header_order, mislabelled_reference) < dice(gland, mislabelled_reference) - 0.1
    assert coarse_reading(segmenter.coarse, mislabelled, checked).header_swaps_superior_inferior
    assert not coarse_reading(segmenter.coarse, image, checked).header_swaps_superior_inferior


def test_the_slice_order_check_judges_the_header_after_reorientation_and_without_it(segmenter):
    """Superior and inferior are judged against the header whatever order reorientation or the file stores the slices in."""
    image = read_volume(DATA / "Prostate158" / "P158-021.nii.gz")
    reference = read_mask(DATA / "Prostate158" / "P158-021_seg.nii.gz").astype(np.uint8)
    stored = coarse_probabilities(segmenter.coarse, image, CoarseOptions(reorient=True))
    # rows and slices reversed with the header changed to match, then the slices put back under that header:
    # the header now says head to feet for slices that run feet to head, and reorientation permutes the voxels
    flipped, flipped_reference = flipped_axes(image, reference, np.random.default_rng(0))
    mislabelled, _ = reversed_slice_order(flipped, flipped_reference, np.random.default_rng(0))
    reading = coarse_reading(segmenter.coarse, mislabelled, CoarseOptions(reorient=True, slice_order=True))
    assert reading.header_swaps_superior_inferior
    np.testing.assert_allclose(reading.probabilities, stored[:, ::-1], atol=1e-4)
    # a right header that stores the slices head to feet, read without reorientation: reversed, and nothing to warn about
    head_to_feet = sitk.DICOMOrient(image, "LPI")
    assert head_to_feet.GetDirection()[8] < 0
    unoriented = coarse_reading(segmenter.coarse, head_to_feet, CoarseOptions(slice_order=True))
    assert not unoriented.header_swaps_superior_inferior
    np.testing.assert_allclose(unoriented.probabilities, stored[::-1], atol=1e-4)


def test_the_plausible_component_is_the_gland_not_a_larger_irregular_region():
    """A coarse mask with half the real gland (confident, continuous) and a larger region on other
    slices whose cross-sections jump from slice to slice (as the bladder side under a coil field)."""
    gland = read_mask(FIXTURES / "Case00_seg.nii.gz")
    half = gland.copy()
    half[:, : int(np.median(np.nonzero(gland)[1]))] = False  # only the posterior half was found
    mask = np.concatenate([half, np.zeros((4, *gland.shape[1:]), dtype=bool)])
    probabilities = np.where(mask, 0.95, 0.0).astype(np.float32)
    for step, offset in enumerate((0, 40, 0, 40)):
        rows, columns = slice(20 + offset, 110 + offset), slice(20 + 3 * offset // 2, 110 + 3 * offset // 2)
        mask[4 + step, rows, columns] = True  # consecutive squares overlap a little: one component
        probabilities[4 + step, rows, columns] = 0.8
    assert np.unique(choose_component(mask, probabilities, (0.6, 0.6, 4.0), plausible=False)[4:].sum(axis=(1, 2))).tolist() == [8100]
    spacing = (0.6, 0.6, 4.0)
    largest = choose_component(mask, probabilities, spacing, plausible=False)
    plausible = choose_component(mask, probabilities, spacing, plausible=True)
    assert largest[4:].any() and not largest[:4].any()
    assert (plausible == np.concatenate([half, np.zeros_like(half)])).all()
    features = component_features(plausible, probabilities, spacing)
    assert 2 <= features.volume_ml <= 200 and features.continuity > 0.5
    boxes = propose_boxes(probabilities, spacing, ProposalOptions(component_filter=ComponentFilter.PLAUSIBLE, margin_mm=0))
    assert sorted(boxes) == [0, 1, 2, 3]
    assert (filtered_mask(probabilities, component_filter=ComponentFilter.PLAUSIBLE, spacing_xyz=spacing) == plausible).all()


def test_the_profile_rule_cuts_a_larger_region_joined_to_the_gland_above_it():
    """The real gland with, on the slices above it and reaching the volume's end, a much larger region touching
    it (one 3D component, as the bladder side under a coil field): the profile rule keeps the gland's slices."""
    gland = read_mask(FIXTURES / "Case00_seg.nii.gz")
    spacing = read_volume(FIXTURES / "Case00.nii.gz").GetSpacing()
    rows, columns = np.nonzero(gland[-1])
    region = np.zeros((3, *gland.shape[1:]), dtype=bool)
    region[:, max(rows.min() - 40, 0) : rows.max() + 40, max(columns.min() - 40, 0) : columns.max() + 40] = True
    below = np.zeros((1, *gland.shape[1:]), dtype=bool)  # the apex is inside the field of view
    mask = np.concatenate([below, gland, region])
    probabilities = np.where(mask, 0.9, 0.0).astype(np.float32)
    assert filtered_mask(probabilities, component_filter=ComponentFilter.VOLUME, spacing_xyz=spacing)[1 + len(gland) :].any()
    kept = filtered_mask(probabilities, component_filter=ComponentFilter.PROFILE, spacing_xyz=spacing)
    assert (kept == np.concatenate([below, gland, np.zeros_like(region)])).all()
    assert sorted(propose_boxes(probabilities, spacing, ProposalOptions(component_filter=ComponentFilter.PROFILE))) == list(range(1, 1 + len(gland)))
    # a region cut off by the field of view is kept only when nothing else is plausible: here the gland too reaches an end
    touching = np.concatenate([gland, region])
    assert (filtered_mask(touching.astype(np.float32), component_filter=ComponentFilter.PROFILE, spacing_xyz=spacing) == touching).all()


def test_the_profile_rule_keeps_a_real_coarse_mask_whole(segmenter):
    image = read_volume(FIXTURES / "P158-020.nii.gz")
    probabilities = coarse_probabilities(segmenter.coarse, image, CoarseOptions(reorient=True))
    spacing = image.GetSpacing()
    largest = filtered_mask(probabilities, component_filter=ComponentFilter.VOLUME, spacing_xyz=spacing)
    assert largest.any()
    assert (filtered_mask(probabilities, component_filter=ComponentFilter.PROFILE, spacing_xyz=spacing) == largest).all()
