import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DATA, FIXTURES
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.core.files import check_outputs
from SAMProstateSDGLib.io.volume_io import label_image, normalised_array, read_volume, write_image


def test_reads_real_volume_and_normalises_to_unit_range():
    image = read_volume(FIXTURES / "Case00.nii.gz")
    assert image.GetSize() == (320, 320, 4)
    values = normalised_array(image)
    assert values.shape == (4, 320, 320) and values.dtype == np.float32
    assert values.min() == 0.0 and values.max() == 1.0


def _write(tmp_path, array, name="image.nii.gz"):
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=False), str(path))
    return path


@pytest.mark.parametrize(
    "array, message",
    [
        (np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "2D"),
        (np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32), "4D"),
        (np.full((5, 32, 32), 7, dtype=np.int16), "constant"),
        (np.random.default_rng(0).random((1, 32, 32), dtype=np.float32), "single slice"),
        (np.pad(np.ones((4, 8, 8), np.uint8), ((0, 0), (12, 12), (12, 12))) * [[[1]], [[2]], [[1]], [[2]]], "label map"),
    ],
)
def test_refuses_volumes_it_cannot_segment(tmp_path, array, message):
    with pytest.raises(InputError, match=message):
        read_volume(_write(tmp_path, array))


def test_a_volume_stored_in_sagittal_slices_is_refused_and_an_oblique_axial_one_is_not(tmp_path):
    """SAM segments the file's slices: a sagittal stack (here P158-020 with its voxels permuted, the same anatomy) was
    segmented sagittal slice by sagittal slice, Dice 0.52 with every slice flagged. Case00 is tilted from axial, and read."""
    image = sitk.ReadImage(str(DATA / "Prostate158" / "P158-020.nii.gz"))
    sagittal = sitk.PermuteAxes(image, [1, 2, 0])  # keeps every voxel's physical position
    sitk.WriteImage(sagittal, str(tmp_path / "sagittal.nii.gz"))
    with pytest.raises(InputError, match=r"has sagittal slices \(90° from axial\): the prostate is segmented on axial T2 slices"):
        read_volume(tmp_path / "sagittal.nii.gz")
    oblique = read_volume(FIXTURES / "Case00.nii.gz")
    assert abs(np.array(oblique.GetDirection()).reshape(3, 3)[2, 2]) < 0.9999


def test_missing_and_unreadable_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(InputError, match="cannot read"):
        read_volume(garbage)


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path):
    image = sitk.Cast(read_volume(FIXTURES / "Case00.nii.gz"), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    for index in range(image.GetDepth()):
        plane = image[:, :, index]
        origin = image.TransformIndexToPhysicalPoint((0, 0, index))
        for tag, value in {
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1",
            "0020|0013": str(index + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0037": "\\".join(f"{v:.9f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])),
            "0008|0060": "MR",
        }.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{index}.dcm"))
        writer.Execute(plane)
    volume = read_volume(tmp_path)
    assert volume.GetSize() == image.GetSize()
    assert np.allclose(volume.GetOrigin(), image.GetOrigin(), atol=1e-3)
    assert np.allclose(volume.GetDirection(), image.GetDirection(), atol=1e-4)


def test_label_image_keeps_exact_geometry_and_writes_atomically(tmp_path):
    image = read_volume(FIXTURES / "P158-020.nii.gz")
    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    labels[1, 10:20, 10:20] = 1
    output = tmp_path / "labels.nii.gz"
    write_image(label_image(labels, image), output)
    written = sitk.ReadImage(str(output))
    assert written.GetOrigin() == image.GetOrigin()
    assert written.GetSpacing() == image.GetSpacing()
    assert written.GetDirection() == image.GetDirection()
    assert (sitk.GetArrayFromImage(written) == labels).all()
    assert [path.name for path in tmp_path.iterdir()] == ["labels.nii.gz"]
    assert output.stat().st_mode & 0o044  # readable by others, like any file the user writes


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    existing = tmp_path / "out.nii.gz"
    existing.write_bytes(b"user data")
    with pytest.raises(InputError, match="--overwrite"):
        check_outputs([existing], [], overwrite=False)
    check_outputs([existing], [], overwrite=True)
    with pytest.raises(InputError, match="does not exist"):
        check_outputs([tmp_path / "no" / "out.nii.gz"], [], overwrite=False)


@pytest.mark.parametrize("name, swapped", [("Case00", True), ("Case29", True), ("P158-020", False)])
def test_zones_read_as_one_convention_whatever_the_site(data, name, swapped):
    """RUNMC / NCI-ISBI number the peripheral zone 1, Prostate158 numbers it 2; we read both as 1 TZ, 2 PZ."""
    from SAMProstateSDGLib.io.dataset import PERIPHERAL_ZONE, TRANSITION_ZONE, find_cases

    case = next(case for case in find_cases(FIXTURES) if case.name == name)
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask)))
    _, labels = case.read()
    assert np.array_equal(labels == PERIPHERAL_ZONE, stored == (1 if swapped else 2))
    assert np.array_equal(labels == TRANSITION_ZONE, stored == (2 if swapped else 1))


def test_the_zone_on_the_glands_rim_becomes_the_peripheral_zone():
    """A 7 x 7 gland: a ring (the peripheral zone wraps the gland) around a 3 x 3 core, and a voxel of another label."""
    from SAMProstateSDGLib.io.dataset import canonical_zones

    ring_is_1 = np.zeros((1, 9, 9), np.uint8)
    ring_is_1[0, 1:8, 1:8] = 1
    ring_is_1[0, 3:6, 3:6] = 2
    ring_is_1[0, 0, 8] = 3
    ring_is_2 = np.zeros((1, 9, 9), np.uint8)
    ring_is_2[0, 1:8, 1:8] = 2
    ring_is_2[0, 3:6, 3:6] = 1
    ring_is_2[0, 0, 8] = 3
    np.testing.assert_array_equal(canonical_zones(ring_is_1), ring_is_2)
    np.testing.assert_array_equal(canonical_zones(ring_is_2), ring_is_2)


def test_a_label_map_is_refused_and_an_image_with_few_grey_levels_is_not(tmp_path):
    with pytest.raises(InputError, match="values 0, 1, 2: it is a label map"):
        read_volume(FIXTURES / "Case29_seg.nii.gz")
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, 32, dtype=np.float32), (4, 32, 32))  # a 0..1 float image
    steps = (np.arange(4 * 32 * 32).reshape(4, 32, 32) % 17).astype(np.int16)  # 17 integer grey levels
    for array in (ramp, steps):
        assert read_volume(_write(tmp_path, np.ascontiguousarray(array))).GetSize() == (32, 32, 4)


def test_a_folder_of_pairs_names_every_case_apart_and_has_no_splits_to_filter(tmp_path):
    """One folder per patient (``P001/t2.nii.gz``) or per site (``A/Case00``, ``B/Case00``) holds images of one name: each
    case keeps its own (results, caches and outputs are kept by name), and an image whose suffix is not its mask's is
    still paired. ``--shifts`` and ``--clicks`` (splits unseen, source-extra) take every case of such a folder."""
    import shutil

    from SAMProstateSDGLib.io.dataset import find_cases, find_cases_of_splits

    for folder, case in (("A", "Case00"), ("B", "Case29")):
        (tmp_path / folder).mkdir()
        shutil.copy(FIXTURES / f"{case}.nii.gz", tmp_path / folder / "t2.nii.gz")
        shutil.copy(FIXTURES / f"{case}_seg.nii.gz", tmp_path / folder / "t2_seg.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(FIXTURES / "P158-020.nii.gz")), str(tmp_path / "A" / "P158.nrrd"))
    shutil.copy(FIXTURES / "P158-020_seg.nii.gz", tmp_path / "A" / "P158_seg.nii.gz")
    cases = find_cases(tmp_path)
    assert sorted((case.name, case.site, case.image.name) for case in cases) == [
        ("A-t2", "A", "t2.nii.gz"), ("B-t2", "B", "t2.nii.gz"), ("P158", "A", "P158.nrrd"),
    ]
    assert find_cases_of_splits(tmp_path, None, ("unseen", "source-extra")) == cases
    (tmp_path / "cases.csv").write_text("case,site,split,image,mask\nx,A,unseen,A/t2.nii.gz,A/t2_seg.nii.gz\nx,B,unseen,B/t2.nii.gz,B/t2_seg.nii.gz\n")
    with pytest.raises(InputError, match="cases.csv holds two cases named x; give every case its own name"):
        find_cases(tmp_path)
    (tmp_path / "cases.csv").write_text("case,site,split,image,mask\nx,A,train,A/t2.nii.gz,A/t2_seg.nii.gz\ny,B,unseen,B/t2.nii.gz,B/t2_seg.nii.gz\n")
    assert [case.name for case in find_cases_of_splits(tmp_path, None, ("unseen", "source-extra"))] == ["y"]
    with pytest.raises(InputError, match="no cases in .* with split source-extra"):
        find_cases_of_splits(tmp_path, None, ("source-extra",))
