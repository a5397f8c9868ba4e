"""MAE: masking, patches, the loss and the position table, against definitions from the paper."""

import math

import pytest
import torch

from sslvit.methods import build_method
from sslvit.methods.mae import (
    MAEConfig,
    masked_patch_loss,
    patchify,
    random_masking,
    unpatchify,
)
from sslvit.models import create_vit
from sslvit.models.pos_embed import sincos_2d
from sslvit.train.optim import param_groups


def test_masking_keeps_exact_count_of_distinct_patches():
    g = torch.Generator().manual_seed(0)
    ids_keep, ids_restore, mask = random_masking(64, 49, 0.75, generator=g)
    n_keep = round(49 * 0.25)
    assert ids_keep.shape == (64, n_keep)
    assert (mask.sum(dim=1) == 49 - n_keep).all()
    for row_keep, row_mask in zip(ids_keep, mask, strict=True):
        assert len(set(row_keep.tolist())) == n_keep
        # the kept indices are exactly the visible (0) positions of the mask
        assert sorted(row_keep.tolist()) == torch.nonzero(row_mask == 0).flatten().tolist()
    # masks differ between samples
    assert len({tuple(m.tolist()) for m in mask}) == 64


def test_restore_puts_every_patch_back():
    g = torch.Generator().manual_seed(1)
    b, n, d = 4, 16, 5
    x = torch.randn(b, n, d)
    ids_keep, ids_restore, mask = random_masking(b, n, 0.5, generator=g)
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    hidden = torch.full((b, n - kept.shape[1], d), float("nan"))
    back = torch.gather(
        torch.cat([kept, hidden], 1), 1, ids_restore.unsqueeze(-1).expand(-1, -1, d)
    )
    visible = mask == 0
    assert torch.equal(back[visible], x[visible])
    assert torch.isnan(back[~visible]).all()


def test_mask_ratio_that_hides_everything_is_refused():
    with pytest.raises(ValueError, match="visible"):
        random_masking(2, 4, 0.99)


@pytest.mark.parametrize("chans", [1, 3, 13])
def test_patchify_round_trip(chans):
    images = torch.randn(2, chans, 12, 8)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 16 * chans)
    assert torch.equal(unpatchify(patches, 4, (3, 2)), images)
    # patch 1 (row 0, column 1) holds pixels [0:4, 4:8], rows then columns then channels
    expected = images[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[0, 1], expected)


def test_loss_counts_only_hidden_patches():
    target = torch.randn(2, 6, 12)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    pred = target.clone()
    pred[mask == 0] += 100.0  # errors on visible patches must not count
    assert masked_patch_loss(pred, target, mask, norm_pix_loss=False).item() == 0.0
    pred = target.clone()
    pred[0, 0] += 2.0  # one hidden patch off by 2 everywhere: its MSE is 4, five hidden patches
    assert masked_patch_loss(pred, target, mask, False).item() == pytest.approx(4.0 / 5)


def test_norm_pix_loss_normalises_each_target_patch():
    target = torch.randn(1, 3, 8) * 5 + 3
    mask = torch.ones(1, 3)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    assert masked_patch_loss(normed, target, mask, True).item() == pytest.approx(0.0, abs=1e-10)


def test_sincos_table_matches_formula():
    dim, gh, gw = 16, 3, 4
    table = sincos_2d(dim, gh, gw)[0]
    assert table.shape == (1 + gh * gw, dim)
    assert torch.equal(table[0], torch.zeros(dim))  # the class token has no position
    quarter = dim // 4
    for row in range(gh):
        for col in range(gw):
            got = table[1 + row * gw + col]
            for i in range(quarter):
                omega = 1.0 / 10000 ** (i / quarter)
                assert got[i].item() == pytest.approx(math.sin(row * omega), abs=1e-6)
                assert got[quarter + i].item() == pytest.approx(math.cos(row * omega), abs=1e-6)
                assert got[2 * quarter + i].item() == pytest.approx(math.sin(col * omega), abs=1e-6)
                assert got[3 * quarter + i].item() == pytest.approx(math.cos(col * omega), abs=1e-6)


def _mae(chans=3, **kwargs):
    torch.manual_seed(0)
    return build_method(MAEConfig(**kwargs), create_vit("vit_tiny", 16, 4, chans))


def test_encoder_sees_visible_patches_only_and_decoder_is_lighter():
    mae = _mae(decoder_embed_dim=64, decoder_depth=1)
    latent, mask, ids_restore = mae.encode_visible(torch.randn(3, 3, 16, 16), 0.75)
    assert latent.shape == (3, 1 + 4, 192)  # class token + 4 of 16 patches
    pred = mae.decode(latent, ids_restore)
    assert pred.shape == (3, 16, 4 * 4 * 3)
    assert mae.decoder_pos_embed.shape == (1, 17, 64)
    assert not mae.encoder.pos_embed.requires_grad


def test_hidden_pixels_do_not_reach_the_encoder():
    mae = _mae(norm_pix_loss=False).eval()
    images = torch.randn(1, 3, 16, 16)
    torch.manual_seed(5)
    latent_a, mask, _ = mae.encode_visible(images, 0.75)
    changed = images.clone()
    hidden = unpatchify(mask.unsqueeze(-1).expand(-1, -1, 48), 4, (4, 4)).bool()
    changed[hidden] = 1000.0
    torch.manual_seed(5)
    latent_b, _, _ = mae.encode_visible(changed, 0.75)
    assert torch.allclose(latent_a, latent_b)


def test_weight_decay_groups():
    mae = _mae()
    decay, no_decay = param_groups(mae, 0.05, mae.no_weight_decay())
    names = {id(p): n for n, p in mae.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "encoder.cls_token" in no_decay_names and "mask_token" in no_decay_names
    assert "encoder.blocks.0.norm1.weight" in no_decay_names
    assert "encoder.blocks.0.attn.qkv.bias" in no_decay_names
    assert "encoder.blocks.0.attn.qkv.weight" in decay_names
    assert "encoder.patch_embed.proj.weight" in decay_names
    # frozen sine-cosine positions are not optimised at all
    assert "encoder.pos_embed" not in no_decay_names | decay_names
    assert all(p.ndim >= 2 for p in decay["params"])
