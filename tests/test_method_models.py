"""The building blocks of DeSAM and SAMed on the real LiteMedSAM weights (and a ViT-B's layout)."""

from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT

from SAMProstateSDGLib.modeling.desam import DeSAM, central_point, grid_points
from SAMProstateSDGLib.modeling.encoder_stages import EncoderFeatures, EncoderStages
from SAMProstateSDGLib.modeling.sam_engine import SAM_BUILDERS
from SAMProstateSDGLib.modeling.samed import SAMed, add_lora


@pytest.fixture(scope="module")
def litemedsam(sam_engine):
    return sam_engine.sam


def test_tiny_vit_stages_reproduce_the_encoder_and_report_their_skips(litemedsam):
    images = litemedsam.preprocess(torch.rand(2, 3, 256, 256) * 255)
    stages = EncoderStages(litemedsam)
    with torch.no_grad():
        features = stages.trunk(stages.stem(images))
        torch.testing.assert_close(features.embedding, litemedsam.image_encoder(images))
        torch.testing.assert_close(stages.stem_from_skips(features.skips), stages.stem(images))
    assert [tuple(skip.shape[1:]) for skip in features.skips] == [(128, 128, 128), (160, 64, 64)]
    assert stages.skip_channels() == [128, 160] and stages.skip_scales() == [2, 1]


def test_vit_stages_skip_the_global_attention_blocks_before_the_last():
    """SAM ViT-B's encoder (its depth, width, heads and global-attention blocks) at a 256 px input: the same code path as
    at 1024 px with a 16x16 token grid, so the two encoder passes take a fraction of a second instead of 20 s."""
    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=256, embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), window_size=14,
                              use_rel_pos=True, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    stages = EncoderStages(SimpleNamespace(image_encoder=encoder, prompt_encoder=SimpleNamespace(image_embedding_size=(16, 16))))
    assert stages.skip_channels() == [768, 768, 768] and stages.skip_scales() == [1, 1, 1]
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        features = stages.features(images)
        torch.testing.assert_close(features.embedding, encoder(images))
    assert [tuple(skip.shape[1:]) for skip in features.skips] == [(768, 16, 16)] * 3


@pytest.mark.parametrize("builder", ["litemedsam", "vit_b"])
def test_lora_changes_only_query_and_value_outputs(builder):
    torch.manual_seed(0)
    encoder = SAM_BUILDERS[builder]().image_encoder
    layers = add_lora(encoder)
    expected_blocks = 12 if builder == "vit_b" else 2 + 6 + 2  # ViT-B blocks; TinyViT's attention stages
    assert len(layers) == expected_blocks
    layer = layers[0]
    tokens = torch.randn(2, 5, layer.qkv.in_features)
    with torch.no_grad():
        before = layer(tokens)
        torch.testing.assert_close(before, layer.qkv(tokens))  # zero-initialised: the base model exactly
        for adapter in (layer.query_up, layer.value_up):
            adapter.weight.normal_()
        after = layer(tokens)
    changed = (after != before).any(0).any(0)
    queries_and_values = torch.zeros(layer.qkv.out_features, dtype=torch.bool)
    queries_and_values[layer.query_outputs] = queries_and_values[layer.value_outputs] = True
    assert changed.equal(queries_and_values)  # keys untouched
    assert len(layer.query_outputs) + len(layer.value_outputs) < layer.qkv.out_features


def test_samed_checkpoint_state_is_lora_prompt_encoder_and_decoder(litemedsam):
    samed = SAMed(litemedsam)
    names = samed.state_dict().keys()
    assert not any(name.startswith("image_encoder.") and "_down." not in name and "_up." not in name for name in names)
    assert {name.split(".")[0] for name in names} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    trainable = {name for name, parameter in samed.named_parameters() if parameter.requires_grad}
    assert trainable <= set(names)
    assert samed.image_encoder is not litemedsam.image_encoder  # the base model is never modified
    with torch.no_grad():
        logits = samed.zone_logits(torch.randn(2, 256, 64, 64))
    assert logits.shape == (2, 3, 256, 256)


def test_desam_gives_one_mask_and_iou_per_prompt(litemedsam, sam_engine):
    torch.manual_seed(0)
    model = DeSAM(litemedsam).eval()
    features = EncoderFeatures(torch.randn(1, 256, 64, 64), [torch.randn(1, 128, 128, 128), torch.randn(1, 160, 64, 64)])
    coordinates = torch.rand(5, 1, 2) * 256
    sparse, dense = litemedsam.prompt_encoder(points=(coordinates, torch.ones(5, 1, dtype=torch.int)), boxes=None, masks=None)
    with torch.no_grad():
        logits, iou = model(features, litemedsam.prompt_encoder.get_dense_pe(), sparse, dense)
    assert logits.shape == (5, 1, 256, 256) and iou.shape == (5, 1)
    assert not torch.allclose(logits[0], logits[1])  # the prompt reaches the mask through PRIM's mask embeddings


def test_grid_points_sit_at_cell_centres():
    points = grid_points(3, (30, 60))
    assert points.shape == (9, 2)
    assert sorted(set(points[:, 0])) == [10.0, 30.0, 50.0] and sorted(set(points[:, 1])) == [5.0, 15.0, 25.0]
    assert np.array_equal(grid_points(1, (30, 60)), [[30.0, 15.0]])


def test_the_grid_point_nearest_the_slice_centre_anchors_the_combination():
    assert central_point(grid_points(3, (30, 60)), (30, 60)) == 4
    assert central_point(grid_points(1, (30, 60)), (30, 60)) == 0
    assert tuple(grid_points(4, (40, 40))[central_point(grid_points(4, (40, 40)), (40, 40))]) == (15.0, 15.0)  # even: the first of the middle four
