"""Activation patching sweeps on the reference transformer: exactness, modes, metrics,
results and bad input (no transformer-lens needed)."""

import subprocess
import sys

import pytest
import torch

from dynalens.circuits import (
    ReferenceConfig,
    ReferenceTransformer,
    activation_patching,
    kl_to_clean,
    logit_diff,
    probability,
)
from dynalens.circuits.results import Cell, PatchingResult
from dynalens.errors import (
    CapabilityError,
    InvalidInputError,
    InvalidParameterError,
    SiteNotFoundError,
)
from dynalens.probe.interventions import Intervention, intervene, record_activations

from ..probe.conftest import hook_count

ALL = [
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "head_out",
    "q",
    "k",
    "v",
    "pattern",
]


@pytest.fixture(scope="module")
def model():
    return ReferenceTransformer(
        ReferenceConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64), seed=1
    ).eval()


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 20, (6, 7), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (corrupt[:, 2] + 3) % 20
    answer, wrong = torch.randint(0, 20, (6,), generator=g), torch.randint(0, 20, (6,), generator=g)
    return clean, corrupt, logit_diff(answer, wrong)


def per_cell_loop(model, clean, corrupt, metric, cells, mode):
    """Reference: one float64-evaluated forward per cell, no stacking."""
    base, source = (corrupt, clean) if mode == "denoising" else (clean, corrupt)
    cache = record_activations(model, source, list({c.site for c in cells}))
    rows = []
    for c in cells:
        with intervene(
            model, [Intervention(c.site, cache[c.site], positions=c.position, heads=c.head)]
        ):
            rows.append(metric(model(base)).double())
    return torch.stack(rows)


@pytest.fixture(scope="module")
def full_sweep_by_loop(model, task):
    clean, corrupt, metric = task
    cells = activation_patching(model, clean, corrupt, metric, components=ALL).cells
    return cells, per_cell_loop(model, clean, corrupt, metric, cells, "denoising")


@pytest.mark.parametrize("max_rows", [6, 17, 60, 10_000])
def test_batched_equals_per_cell_loop_for_every_chunk_size(
    model, task, full_sweep_by_loop, max_rows
):
    clean, corrupt, metric = task
    result = activation_patching(model, clean, corrupt, metric, components=ALL, max_rows=max_rows)
    cells, expected = full_sweep_by_loop
    assert result.cells == cells and len(cells) == 2 * (5 * 7 + 5 * 7 * 4)
    torch.testing.assert_close(result.values, expected, atol=1e-6, rtol=0)
    assert hook_count(model) == 0


def test_noising_equals_per_cell_loop_with_shuffled_rows(model, task):
    clean, corrupt, metric = task
    result = activation_patching(
        model,
        clean,
        corrupt,
        metric,
        components=["head_out"],
        positions="all",
        mode="noising",
        max_rows=13,
    )
    expected = per_cell_loop(model, clean, corrupt, metric, result.cells, "noising")
    torch.testing.assert_close(result.values, expected, atol=1e-6, rtol=0)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    answer_metric = task[2]
    shuffled = activation_patching(
        model,
        clean[perm],
        corrupt[perm],
        lambda lg: answer_metric_perm(lg, answer_metric, perm),
        components=["head_out"],
        positions="all",
        mode="noising",
        max_rows=13,
    )
    torch.testing.assert_close(shuffled.values, result.values[:, perm], atol=1e-6, rtol=0)


def answer_metric_perm(logits, metric, perm):
    """The metric of the un-permuted batch evaluated on permuted logits."""
    inverse = torch.argsort(perm)
    return metric(logits[inverse])[perm]


def test_recovery_is_one_where_the_corruption_lives(model, task):
    clean, corrupt, metric = task
    r = activation_patching(model, clean, corrupt, metric, components=["resid_pre"], layers=[0])
    norm = r.normalised()
    assert norm[2].item() == pytest.approx(1.0, abs=1e-5)  # position 2 carries all
    assert torch.allclose(norm[[0, 1, 3, 4, 5, 6]], torch.zeros(6, dtype=torch.float64), atol=1e-6)
    last = activation_patching(
        model, clean, corrupt, metric, components=["resid_post"], layers=[1], positions=[6]
    )
    assert last.normalised()[0].item() == pytest.approx(1.0, abs=1e-5)
    noised = activation_patching(
        model, clean, corrupt, metric, components=["resid_pre"], layers=[0], mode="noising"
    )
    assert noised.normalised()[2].item() == pytest.approx(0.0, abs=1e-5)  # destroys it
    assert noised.normalised()[0].item() == pytest.approx(1.0, abs=1e-5)  # leaves it


def test_all_heads_of_a_layer_equal_the_attention_output(model, task):
    clean, corrupt, _ = task
    cache = record_activations(model, clean, ["blocks.1.attn.hook_z", "blocks.1.hook_attn_out"])
    with intervene(model, [Intervention("blocks.1.attn.hook_z", cache["blocks.1.attn.hook_z"])]):
        by_heads = model(corrupt)
    with intervene(
        model, [Intervention("blocks.1.hook_attn_out", cache["blocks.1.hook_attn_out"])]
    ):
        by_output = model(corrupt)
    torch.testing.assert_close(by_heads, by_output, atol=1e-5, rtol=0)


def test_mean_and_zero_ablation_match_direct_interventions(model, task):
    clean, corrupt, metric = task
    g = torch.Generator().manual_seed(5)
    reference = torch.randint(0, 20, (9, 7), generator=g)
    mean = activation_patching(
        model, clean, corrupt, metric, components=["mlp_out"], mode="mean", reference=reference
    )
    zero = activation_patching(
        model, clean, None, metric, components=["mlp_out"], mode="zero", positions="all"
    )
    site = "blocks.0.hook_mlp_out"
    ref_mean = record_activations(model, reference, [site])[site].mean(0, keepdim=True)
    with intervene(model, [Intervention(site, ref_mean, positions=[4])]):
        expected = metric(model(clean)).double()
    torch.testing.assert_close(mean.values[4], expected, atol=1e-6, rtol=0)
    with intervene(model, [Intervention(site, "zero")]):
        expected = metric(model(clean)).double()
    torch.testing.assert_close(zero.values[0], expected, atol=1e-6, rtol=0)
    assert zero.mode == "zero-ablation" and mean.mode == "mean-ablation"
    assert "normalised" not in zero.table(n_boot=50).columns
    with pytest.raises(InvalidParameterError, match="need a corrupt run"):
        zero.normalised()


def test_metrics_against_closed_forms():
    logits = torch.tensor([[[0.0, 1.0, 3.0]], [[2.0, 0.0, -1.0]]])
    torch.testing.assert_close(
        logit_diff(torch.tensor([2, 0]), 1)(logits), torch.tensor([2.0, 2.0])
    )
    p = probability(2)(logits)
    torch.testing.assert_close(p, torch.softmax(logits[:, 0].double(), -1)[:, 2])
    assert torch.all(kl_to_clean(logits)(logits) == 0)
    other = torch.tensor([[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]])
    pc = torch.softmax(logits[:, 0].double(), -1)
    expected = (pc * (pc.log() - torch.log(torch.full_like(pc, 1 / 3)))).sum(-1)
    torch.testing.assert_close(kl_to_clean(logits)(other), expected)


def test_kl_to_clean_is_zero_for_full_denoising(model, task):
    clean, corrupt, _ = task
    kl = kl_to_clean(model(clean).detach())
    r = activation_patching(
        model, clean, corrupt, kl, components=["resid_pre"], layers=[0], positions="all"
    )
    assert r.mean()[0].item() == pytest.approx(0.0, abs=1e-9)
    assert r.corrupt.mean() > 0


def test_bootstrap_weights_equal_resampled_means():
    g = torch.Generator().manual_seed(0)
    values, clean, corrupt = (
        torch.randn(3, 8, generator=g, dtype=torch.float64),
        torch.randn(8, dtype=torch.float64) + 5,
        torch.randn(8, dtype=torch.float64),
    )
    result = PatchingResult(
        [Cell("x", i, "s") for i in range(3)], values, corrupt, clean, corrupt, "denoising"
    )
    got = result.bootstrap(n_boot=200, level=0.9, seed=3)
    draws = torch.randint(0, 8, (200, 8), generator=torch.Generator().manual_seed(3))
    loop_effect = torch.stack([values[:, d].mean(1) - corrupt[d].mean() for d in draws], 1)
    loop_norm = torch.stack(
        [
            (values[:, d].mean(1) - corrupt[d].mean()) / (clean[d].mean() - corrupt[d].mean())
            for d in draws
        ],
        1,
    )
    q = torch.tensor([0.05, 0.95], dtype=torch.float64)
    torch.testing.assert_close(
        torch.stack([got["effect_lo"], got["effect_hi"]]), torch.quantile(loop_effect, q, dim=1)
    )
    torch.testing.assert_close(
        torch.stack([got["normalised_lo"], got["normalised_hi"]]),
        torch.quantile(loop_norm, q, dim=1),
    )
    assert torch.all(got["effect_lo"] <= result.effect()) and torch.all(
        result.effect() <= got["effect_hi"]
    )


def test_sign_flip_p_values_against_enumeration():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, dtype=torch.float64, generator=g)
    diffs = torch.stack([
        torch.tensor([0.5, 1.0, 2.0, 0.1, 0.3, 0.7], dtype=torch.float64),  # all positive
        torch.randn(6, dtype=torch.float64, generator=g),
        torch.zeros(6, dtype=torch.float64),
    ])  # fmt: skip
    result = PatchingResult(
        [Cell("x", i, "s") for i in range(3)], base + diffs, base, base + 1, base, "noising"
    )
    p = result.p_values()
    assert p[0].item() == pytest.approx(2 / 64)  # only all-plus and all-minus reach it
    brute = 0
    for code in range(64):
        signs = torch.tensor([1.0 - 2.0 * ((code >> i) & 1) for i in range(6)], dtype=torch.float64)
        brute += int((signs * diffs[1]).mean().abs() >= diffs[1].mean().abs() - 1e-12)
    assert p[1].item() == pytest.approx(brute / 64)
    assert p[2].item() == 1.0
    monte_carlo = result.p_values(n_perm=2_000, seed=0)  # 2^6 <= 2000: still exact
    torch.testing.assert_close(monte_carlo, p)
    sampled = result.p_values(n_perm=40, seed=0)  # 64 > 40: Monte Carlo, (k + 1) / (n + 1)
    assert sampled[0].item() < 0.2 and sampled[2].item() == 1.0


def test_table_grid_and_heatmap(model, task):
    clean, corrupt, metric = task
    r = activation_patching(
        model,
        clean,
        corrupt,
        metric,
        components=["resid_pre", "head_out", "pattern"],
        positions=[2, 6],
    )
    table = r.table(n_boot=100)
    assert list(table.columns) == [
        "component",
        "site",
        "layer",
        "position",
        "head",
        "value",
        "effect",
        "effect_lo",
        "effect_hi",
        "normalised",
        "normalised_lo",
        "normalised_hi",
        "p_value",
        "mode",
    ]
    assert len(table) == len(r.cells) == 2 * 2 + 2 * 2 * 4 * 2
    assert table["head"].isna().sum() == 4
    assert r.grid("resid_pre").shape == (2, 2)
    assert r.grid("head_out").shape == (2, 2, 4)
    assert r.grid("pattern").shape == (2, 4, 2)
    all_pos = activation_patching(
        model, clean, corrupt, metric, components=["head_out"], positions="all"
    )
    assert all_pos.grid("head_out", "normalised").shape == (2, 4)
    pytest.importorskip("plotly")
    from dynalens.circuits.figures import patching_heatmap

    for component in ("resid_pre", "head_out", "pattern"):
        fig = patching_heatmap(r, component, tokens=[str(t) for t in range(7)])
        assert fig.layout.title.text == f"denoising patching: {component} (normalised)"
        assert fig.layout.xaxis.title.text == "position" and fig.layout.yaxis.title.text
    fig = patching_heatmap(all_pos, "head_out", quantity="effect")
    assert fig.layout.xaxis.title.text == "head" and fig.data[0].z.shape == (2, 4)


def test_sites_on_a_plain_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).eval()
    clean, corrupt = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    metric = lambda out: out[:, -1, 0] - out[:, -1, 1]  # noqa: E731
    r = activation_patching(net, clean, corrupt, metric, sites=["0", "1"], positions="all")
    assert r.normalised().tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


# --- bad input (issue 12 section 6) -------------------------------------------------


def test_unknown_site_names_close_matches(model, task):
    clean, corrupt, metric = task
    with pytest.raises(SiteNotFoundError, match="did you mean"):
        activation_patching(model, clean, corrupt, metric, sites=["blocks.1.hook_resid_pots"])


def test_out_of_range_positions_heads_layers(model, task):
    clean, corrupt, metric = task
    with pytest.raises(InvalidInputError, match=r"positions \[7\] out of range"):
        activation_patching(model, clean, corrupt, metric, positions=[7])
    with pytest.raises(InvalidInputError, match=r"heads \[4\] out of range"):
        activation_patching(model, clean, corrupt, metric, components=["head_out"], heads=[4])
    with pytest.raises(InvalidParameterError, match="layer 2 is out of range"):
        activation_patching(model, clean, corrupt, metric, layers=[2])


def test_clean_and_corrupt_of_different_shapes(model, task):
    clean, _, metric = task
    with pytest.raises(InvalidInputError, match="same shape"):
        activation_patching(model, clean, clean[:, :6], metric)


def test_scalar_metric_is_refused(model, task):
    clean, corrupt, metric = task
    with pytest.raises(
        InvalidInputError, match=r"one value per example \(a \[6\] tensor\); got \(\)"
    ):
        activation_patching(model, clean, corrupt, lambda lg: metric(lg).mean())


def test_training_mode_is_refused(task):
    clean, corrupt, metric = task
    with pytest.raises(InvalidInputError, match="training mode"):
        activation_patching(ReferenceTransformer(seed=0), clean, corrupt, metric)


def test_missing_capability_names_the_alternative(task):
    clean, corrupt, metric = task
    attn_only = ReferenceTransformer(ReferenceConfig(d_mlp=None), seed=0).eval()
    with pytest.raises(CapabilityError, match="attention-only model has no MLP"):
        activation_patching(attn_only, clean, corrupt, metric, components=["mlp_out"])
    net = torch.nn.Sequential(torch.nn.Linear(3, 3)).eval()
    with pytest.raises(CapabilityError, match="pass sites="):
        activation_patching(net, torch.randn(2, 3, 3), torch.randn(2, 3, 3), metric)


def test_bad_parameters(model, task):
    clean, corrupt, metric = task
    with pytest.raises(InvalidParameterError, match="mode must be one of"):
        activation_patching(model, clean, corrupt, metric, mode="resample")
    with pytest.raises(InvalidParameterError, match="unknown component 'resid'"):
        activation_patching(model, clean, corrupt, metric, components=["resid"])
    with pytest.raises(InvalidParameterError, match="max_rows"):
        activation_patching(model, clean, corrupt, metric, max_rows=0)
    with pytest.raises(InvalidInputError, match="needs a corrupt input"):
        activation_patching(model, clean, None, metric)
    same = activation_patching(model, clean, clean, metric, layers=[0], positions=[0])
    with pytest.raises(InvalidParameterError, match=r"recovery .* is undefined"):
        same.normalised()


def test_importing_circuits_stays_light():
    code = (
        "import sys, dynalens, dynalens.circuits, dynalens.probe.interventions\n"
        "heavy = ('transformer_lens', 'transformers', 'plotly', 'pandas')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
