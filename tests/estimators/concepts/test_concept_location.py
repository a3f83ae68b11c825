"""Concept activation maps and the location scores: ground truth from models that read
exactly the mask pixels (or exactly the background), exact gradients of linear models,
Grad-CAM = CoAM for a linear concept on pooled features, chance levels of random maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynalens.concepts.data.multi_shapes import make_multi_shapes
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import ConceptLocation, coam, concept_activation_maps
from dynalens.estimators.concepts import concept_location as location


@pytest.fixture(scope="module")
def data():
    return make_multi_shapes(120, pixel_noise=0.0, seed=1)


def _reader(masks: torch.Tensor, inside: bool):
    """Concept logit j = sum of the pixels inside (or outside) concept j's mask."""
    region = masks.float() if inside else (~masks).float()

    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,nkhw->nk", x, region)

    return model


@pytest.mark.parametrize("score", ["mass", "pointing", "clm"])
def test_mask_reader_scores_one_and_background_reader_zero(data, score) -> None:
    # the map is flat on the mask, so CLM's region must hold the largest mask (~100 px)
    on = concept_activation_maps(_reader(data.masks, True), data.x, method="grad_x_input")
    off = concept_activation_maps(_reader(data.masks, False), data.x, method="grad_x_input")
    hit = location(on, data.masks, score=score, region_frac=3 / 12, n_boot=50)
    # a flat map's argmax is the object's first pixel: within a radius (5.6 px) + 1 of the point
    assert location(on, data.masks, score="distance", n_boot=0).value < 6.6
    miss = location(off, data.masks, score=score, region_frac=3 / 12, n_boot=50)
    assert hit.value == pytest.approx(1.0) and hit.interval[0] == pytest.approx(1.0)
    assert miss.value == pytest.approx(0.0, abs=1e-12)
    assert hit.details["n_pairs"] == int(data.c_full.sum())  # every present concept counted


def test_random_maps_score_chance(data) -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(data.masks.shape, generator=g)
    for frac in (1 / 12, 3 / 12, 6 / 12):
        res = location(maps, data.masks, score="clm", region_frac=frac, n_boot=200)
        assert res.interval[0] <= frac <= res.interval[1]
    res = location(maps, data.masks, score="pointing", n_boot=0)
    p = res.details["chance"]
    assert abs(res.value - p) < 3 * (p * (1 - p) / res.details["n_pairs"]) ** 0.5  # binomial
    res = location(maps, data.masks, score="mass", n_boot=200)
    assert res.value == pytest.approx(res.details["chance"], abs=0.01)


def test_region_fraction_is_counted_exactly() -> None:
    masks = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    masks[0, 0, 0, :2] = True  # two pixels
    maps = torch.arange(16.0).flip(0).reshape(1, 1, 4, 4)  # largest at (0, 0), (0, 1), ...
    for frac, expected in ((1 / 16, 1.0), (2 / 16, 1.0), (4 / 16, 0.5), (8 / 16, 0.25)):
        res = location(maps, masks, score="region", region_frac=frac, n_boot=0)
        assert res.value == pytest.approx(expected)
    # CLM with an explicit point: (0, 3) enters the top region at 4 pixels
    points = torch.tensor([[[0, 3]]])
    assert (
        location(maps, masks, score="clm", region_frac=3 / 16, points=points, n_boot=0).value == 0
    )
    assert (
        location(maps, masks, score="clm", region_frac=4 / 16, points=points, n_boot=0).value == 1
    )


def test_pointing_distance_exact() -> None:
    masks = torch.zeros(1, 1, 3, 4, dtype=torch.bool)
    masks[0, 0, 0, 0] = True
    maps = torch.zeros(1, 1, 3, 4)
    maps[0, 0, 2, 3] = 1.0  # argmax at (2, 3); the point is the one mask pixel (0, 0)
    res = location(maps, masks, score="distance", n_boot=0)
    assert res.value == pytest.approx(13**0.5)
    dists = [((r**2 + c**2) ** 0.5) for r in range(3) for c in range(4)]
    assert res.details["chance"] == pytest.approx(sum(dists) / 12)
    points = torch.tensor([[[2, 1]]])
    assert location(maps, masks, score="distance", points=points, n_boot=0).value == 2.0


def test_top_l_and_denominator() -> None:
    masks = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    masks[:, 0, :2, :2] = True  # concept 0 present in both images, concept 1 nowhere
    maps = masks.float()
    ranking = torch.tensor([[0.0, 1.0, -1.0], [1.0, 0.0, -1.0]])  # image 0 ranks concept 1 first
    kw = {"score": "pointing", "n_boot": 0, "ranking": ranking, "top_l": 1}
    assert location(maps, masks, denominator="present", **kw).value == 1.0
    assert location(maps, masks, denominator="all", **kw).value == 0.5
    with pytest.raises(InvalidInputError, match="ranking"):
        location(maps, masks, top_l=1, n_boot=0)
    # an absent top concept is a miss for every score, even where its map peaks at (0, 0)
    peaked = maps.clone()
    peaked[:, 1, 0, 0] = 5.0  # the absent concept's map peaks at the (0, 0) default point
    kw["score"] = "clm"
    assert location(peaked, masks, denominator="all", region_frac=4 / 16, **kw).value == 0.5
    with pytest.raises(InvalidParameterError, match="denominator"):
        location(maps, masks, denominator="all", **{**kw, "score": "distance"})


def test_gradients_of_a_linear_model_are_exact() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, 5, 6, generator=g)
    x = torch.randn(4, 2, 5, 6, generator=g)

    def model(inp: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", inp, w) + 0.7

    grad = concept_activation_maps(model, x, method="gradient", batch_size=3)
    assert torch.allclose(grad, w.abs().amax(1).expand(4, 3, 5, 6), atol=1e-6)
    gxi = concept_activation_maps(model, x, concepts=[2, 0])
    assert torch.allclose(gxi, torch.einsum("nchw,kchw->nkhw", x, w[[2, 0]]), atol=1e-5)
    # completeness: grad x input sums to the logit minus its bias
    assert torch.allclose(gxi.sum((2, 3)), model(x)[:, [2, 0]] - 0.7, atol=1e-4)


def test_gradcam_before_relu_equals_coam_for_a_pooled_linear_concept() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
    cav = nn.Linear(6, 4, bias=False)
    enc = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), cav)
    x = torch.randn(5, 3, 8, 8)
    cam = concept_activation_maps(enc, x, method="gradcam", layer=conv, relu=False)
    with torch.no_grad():
        ref = coam(conv(x), cav.weight, (8, 8))
    assert torch.allclose(cam, ref * 6 / 64, atol=1e-6)  # scale d / (h w)
    relu = concept_activation_maps(enc, x, method="gradcam", layer=conv)
    assert torch.equal(relu, cam.clamp_min(0))
    assert enc.training  # the caller's mode is restored


def test_bad_input_is_refused(data) -> None:
    maps = torch.zeros(data.masks.shape)
    with pytest.raises(InvalidInputError, match="same shape"):
        location(maps[:, :2], data.masks)
    with pytest.raises(InvalidInputError, match="NaN"):
        location(maps.fill_(float("nan")), data.masks)
    with pytest.raises(InvalidParameterError, match="layer"):
        concept_activation_maps(nn.Flatten(), data.x, method="gradcam")
    with pytest.raises(InvalidInputError, match="concept logits"):
        concept_activation_maps(nn.Identity(), data.x)
    with pytest.raises(InvalidInputError, match="another layer"):
        coam(torch.zeros(2, 4, 3, 3), torch.zeros(5, 3), (6, 6))
    with pytest.raises(InvalidParameterError):
        ConceptLocation(score="iou").estimate(maps, data.masks)
