"""The coarse network's domain-generalisation augmentations on a real fixture slice."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import Compose
from scipy import ndimage

from conftest import FIXTURES
from SAMProstateSDGLib.io.volume_io import normalised_array, read_image, read_volume
from SAMProstateSDGLib.modeling.coarse_net import CoarseNetConfig
from SAMProstateSDGLib.training.coarse import augmentations
from SAMProstateSDGLib.training.dg_augmentation import RandAnisotropicLowResolutiond, RandGlobalIntensityNonlineard, RandSmoothGainFieldd, dg_appearance


@pytest.fixture(scope="module")
def fixture_slice() -> dict[str, torch.Tensor]:
    """The gland's middle slice of the RUNMC fixture on the coarse network's canvas."""
    image, mask = read_volume(FIXTURES / "Case00.nii.gz"), read_image(FIXTURES / "Case00_seg.nii.gz", "mask")
    canvas = CoarseNetConfig().canvas
    images = canvas.to_canvas(normalised_array(image), image)
    masks = canvas.to_canvas((sitk.GetArrayFromImage(mask) > 0).astype(np.float32), image, nearest=True)
    index = int(masks.sum(axis=(1, 2)).argmax())
    return {"image": torch.from_numpy(images[index][None]), "label": torch.from_numpy(masks[index][None])}


def run(transform, sample: dict, seed: int) -> dict:
    transform.set_random_state(seed)
    return transform({key: value.clone() for key, value in sample.items()})


def test_gin_changes_intensities_but_not_geometry(fixture_slice):
    gin = RandGlobalIntensityNonlineard("image", prob=1.0)
    original = fixture_slice["image"]
    for seed in range(3):
        remapped = run(gin, fixture_slice, seed)["image"]
        assert np.isfinite(remapped.numpy()).all() and remapped.min() >= 0.0 and remapped.max() <= 1.0
        assert (remapped - original).abs().mean() > 0.01  # the draw remaps the intensities
        # the same draw on the slice moved by 7 pixels gives the remapped slice moved by 7 pixels: the net
        # is a stack of centred convolutions, so anatomy stays where it was (compared away from the edges)
        moved = run(gin, {"image": torch.roll(original, (7, 7), dims=(1, 2)), "label": fixture_slice["label"]}, seed)["image"]
        inside = (slice(None), slice(20, -20), slice(20, -20))
        expected = torch.roll(remapped, (7, 7), dims=(1, 2))[inside].ravel()
        assert np.corrcoef(moved[inside].ravel(), expected)[0, 1] > 0.99
        assert np.corrcoef(remapped[inside].ravel(), expected)[0, 1] < 0.9


def test_low_resolution_blurs_the_image_only(fixture_slice):
    coarser = run(RandAnisotropicLowResolutiond("image", prob=1.0, spacing_range=(2.0, 2.0)), fixture_slice, 0)
    assert coarser["image"].shape == fixture_slice["image"].shape
    assert torch.equal(coarser["label"], fixture_slice["label"])
    detail = lambda image: np.abs(np.diff(image.numpy(), axis=-1)).mean()  # noqa: E731
    assert detail(coarser["image"]) < 0.8 * detail(fixture_slice["image"])


def test_dg_augmentations_are_seeded_in_range_and_keep_the_label_on_the_gland(fixture_slice):
    transform = augmentations(CoarseNetConfig().canvas.size, "dg")
    first = [run(transform, fixture_slice, seed) for seed in range(5)]
    again = run(transform, fixture_slice, 3)
    assert torch.equal(first[3]["image"], again["image"]) and torch.equal(first[3]["label"], again["label"])
    assert len({float(sample["image"].sum()) for sample in first}) == len(first)  # each seed draws another slice
    for sample in first:
        image, label = np.asarray(sample["image"]), np.asarray(sample["label"])
        assert image.shape == label.shape == (1, 160, 160)
        assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
        assert set(np.unique(label)) <= {0.0, 1.0}
    # spatial transforms move the label with the image: with intensity changes off, the augmented image
    # under the augmented label is the gland's own texture (its mean differs from the background's)
    spatial_only = augmentations(CoarseNetConfig().canvas.size, "dg")
    spatial_only.transforms = spatial_only.transforms[:4]
    gland_mean = float(fixture_slice["image"][fixture_slice["label"] > 0].mean())
    for seed in range(5):
        moved = run(spatial_only, fixture_slice, seed)
        inside = moved["image"][moved["label"] > 0]
        if len(inside) > 50:
            assert abs(float(inside.mean()) - gland_mean) < 0.05


def test_smooth_gain_field_is_seeded_smooth_strong_and_leaves_the_label(fixture_slice):
    field = RandSmoothGainFieldd("image", prob=1.0)
    label = fixture_slice["label"].clone()
    original = fixture_slice["image"]
    contrasts = []
    for seed in range(6):
        shaded = run(field, fixture_slice, seed)
        assert torch.equal(shaded["image"], run(field, fixture_slice, seed)["image"])  # the same seed, the same field
        assert torch.equal(shaded["label"], label)
        assert shaded["image"].shape == original.shape and torch.isfinite(shaded["image"]).all() and shaded["image"].min() >= 0
        gain = field.log_gain(original.shape[-2:])
        assert gain.diff(dim=0).abs().max() < 0.25 and gain.diff(dim=1).abs().max() < 0.25  # smooth: no edges of its own
        # where nothing saturated, the image is the original times the field
        unsaturated = shaded["image"] < shaded["image"].max()
        expected = original * torch.exp(gain)
        assert torch.allclose(shaded["image"][unsaturated], expected[unsaturated], rtol=1e-4, atol=1e-6)
        contrasts.append(float(gain.max() - gain.min()))
    assert max(contrasts) > np.log(10)  # the family reaches a tenfold bright-to-dark ratio across the canvas
    assert len({round(value, 4) for value in contrasts}) == len(contrasts)  # each seed draws another field


def test_smooth_gain_field_ignores_the_label(fixture_slice):
    field = RandSmoothGainFieldd("image", prob=1.0)
    without_gland = {"image": fixture_slice["image"], "label": torch.zeros_like(fixture_slice["label"])}
    assert torch.equal(run(field, fixture_slice, 4)["image"], run(field, without_gland, 4)["image"])


def test_dg_appearance_changes_a_volume_as_one_acquisition(fixture_slice):
    """The same slice twice as a two-slice volume stays alike under every draw (fields, curves, resolution and random
    convolutions are drawn once per volume; only the noise differs), while the draws change the slice itself."""
    volume = {"image": fixture_slice["image"].repeat(2, 1, 1)}
    changes = []
    for seed in range(8):
        image = run(Compose(dg_appearance()), volume, seed)["image"]
        assert image.shape == volume["image"].shape and 0 <= float(image.min()) and float(image.max()) <= 1
        local_means = [ndimage.uniform_filter(slice_.numpy(), 5) for slice_ in image]  # the noise (per pixel) averaged out
        assert np.corrcoef(local_means[0].ravel(), local_means[1].ravel())[0, 1] > 0.98
        changes.append(float((image[0] - volume["image"][0]).abs().mean()))
    assert max(changes) > 0.1
