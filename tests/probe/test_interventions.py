"""The intervention primitive on the reference transformer and on a plain nn.Module."""

import pytest
import torch

from dynalens.circuits.reference import ReferenceConfig, ReferenceTransformer
from dynalens.errors import (
    CapabilityError,
    InvalidInputError,
    InvalidParameterError,
    SiteNotFoundError,
)
from dynalens.probe.interventions import (
    Intervention,
    intervene,
    mean_activation,
    record_activations,
)
from dynalens.probe.interventions_sites import detect_backend

from .conftest import hook_count

Z = "blocks.1.attn.hook_z"
RESID = "blocks.0.hook_resid_pre"


@pytest.fixture(scope="module")
def model():
    return ReferenceTransformer(ReferenceConfig(n_layers=2, d_model=32, n_heads=4), seed=0).eval()


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 20, (5, 7), generator=g)
    corrupt = clean.clone()
    corrupt[:, 3] = (corrupt[:, 3] + 1) % 20
    return clean, corrupt


def test_hooks_removed_after_exit_and_on_exception(model, pair):
    clean, corrupt = pair
    cache = record_activations(model, clean, [RESID, Z])
    assert hook_count(model) == 0
    with intervene(model, [Intervention(RESID, cache[RESID]), Intervention(Z, "zero")]) as hooks:
        assert hook_count(model) == len(hooks) == 2
        model(corrupt)
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(model, [Intervention(Z, "zero")]):
            raise RuntimeError("boom")
    assert hook_count(model) == 0
    with pytest.raises(InvalidInputError):  # raised inside the forward: hooks still removed
        with intervene(model, [Intervention(Z, "zero", positions=[99])]):
            model(corrupt)
    assert hook_count(model) == 0


def test_own_values_are_a_bitwise_noop(model, pair):
    clean, _ = pair
    plain = model(clean)
    cache = record_activations(model, clean, [RESID, Z])
    assert torch.equal(model(clean), plain)  # recording changes nothing
    with intervene(model, [Intervention(RESID, cache[RESID]), Intervention(Z, cache[Z])]):
        assert torch.equal(model(clean), plain)


def test_patching_every_position_reproduces_the_clean_run(model, pair):
    clean, corrupt = pair
    cache = record_activations(model, clean, [RESID])
    with intervene(model, [Intervention(RESID, cache[RESID])]):
        torch.testing.assert_close(model(corrupt), model(clean), atol=1e-5, rtol=0)


def test_positions_heads_rows_select_exactly_those_entries(model, pair):
    clean, corrupt = pair
    src = record_activations(model, clean, [Z])[Z]
    base = record_activations(model, corrupt, [Z])[Z]
    iv = Intervention(Z, src, positions=[1, 3], heads=[2], rows=[0, 4])
    with intervene(model, [iv]):
        seen = record_activations(model, corrupt, [Z])[Z]  # hooked after: sees the edit
    expected = base.clone()
    for r in (0, 4):
        for p in (1, 3):
            expected[r, p, 2] = src[r, p, 2]
    assert torch.equal(seen, expected)


def test_rows_take_aligned_source_rows(model, pair):
    clean, corrupt = pair
    src = record_activations(model, clean, [RESID])[RESID]
    base = record_activations(model, corrupt, [RESID])[RESID]
    with intervene(model, [Intervention(RESID, src[:2], rows=[3, 1], positions=[0])]):
        seen = record_activations(model, corrupt, [RESID])[RESID]
    expected = base.clone()
    expected[3, 0], expected[1, 0] = src[0, 0], src[1, 0]
    assert torch.equal(seen, expected)


def test_add_zero_mean_and_callable_sources(model, pair):
    clean, corrupt = pair
    base = record_activations(model, corrupt, [RESID])[RESID]
    delta = torch.randn(1, 1, 32)
    cases = {
        "add": (Intervention(RESID, delta, op="add"), base + delta),
        "zero": (
            Intervention(RESID, "zero", positions=[2]),
            base.index_fill(1, torch.tensor([2]), 0.0),
        ),
        "callable": (Intervention(RESID, lambda a: 2 * a), 2 * base),
    }
    mean = mean_activation(record_activations(model, clean, [RESID])[RESID])
    assert mean.shape == (1, 7, 32)
    cases["mean"] = (Intervention(RESID, mean), mean.expand_as(base))
    for name, (iv, expected) in cases.items():
        with intervene(model, [iv]):
            seen = record_activations(model, corrupt, [RESID])[RESID]
        torch.testing.assert_close(seen, expected, msg=name)


def test_project_interchanges_only_the_subspace(model, pair):
    clean, corrupt = pair
    src = record_activations(model, clean, [RESID])[RESID]
    base = record_activations(model, corrupt, [RESID])[RESID]
    q = torch.linalg.qr(torch.randn(32, 3, generator=torch.Generator().manual_seed(0))).Q
    with intervene(model, [Intervention(RESID, src, op="project", basis=q)]):
        seen = record_activations(model, corrupt, [RESID])[RESID]
    torch.testing.assert_close(seen @ q, src @ q, atol=1e-5, rtol=0)  # inside: the source
    p_out = torch.eye(32) - q @ q.T
    torch.testing.assert_close(seen @ p_out, base @ p_out, atol=1e-5, rtol=0)  # outside: base
    full = torch.linalg.qr(torch.randn(32, 32)).Q  # rank d = full interchange
    with intervene(model, [Intervention(RESID, src, op="project", basis=full)]):
        torch.testing.assert_close(model(corrupt), model(clean), atol=1e-4, rtol=0)
    plain = model(corrupt)
    with intervene(model, [Intervention(RESID, src, op="project", basis=torch.zeros(32, 0))]):
        assert torch.equal(model(corrupt), plain)  # rank 0: a no-op


def test_any_module_by_path():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    x = torch.randn(6, 4)
    assert detect_backend(net).kind == "module"
    with intervene(net, [Intervention("1", "zero", rows=[0, 2])]):
        out = net(x)
    assert torch.equal(out[[0, 2]], net[2].bias.expand(2, 2).detach())
    assert torch.equal(out[[1, 3, 4, 5]], net(x)[[1, 3, 4, 5]])
    assert hook_count(net) == 0


def test_unknown_site_names_close_matches(model):
    with pytest.raises(SiteNotFoundError, match=r"did you mean 'blocks\.0\.hook_resid_pre'"):
        with intervene(model, [Intervention("blocks.0.hook_resid_pr", "zero")]):
            pass
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    ("iv", "match"),
    [
        (Intervention(Z, "zero", heads=[4]), r"heads \[4\] out of range .* 4 heads"),
        (Intervention(Z, "zero", positions=[7]), r"positions \[7\] out of range"),
        (Intervention(RESID, "zero", heads=[0]), "no 'head' axis"),
        (Intervention(RESID, torch.zeros(5, 6, 32)), "does not fit the activation"),
        (Intervention(RESID, lambda a: a[:, 0]), "must return a tensor of the activation's shape"),
        (
            Intervention(RESID, torch.zeros(5, 7, 32), op="project", basis=torch.eye(8)[:, :2]),
            "basis has 8 rows",
        ),
    ],
)
def test_bad_inputs_raise_in_the_forward(model, pair, iv, match):
    with pytest.raises(InvalidInputError, match=match):
        with intervene(model, [iv]):
            model(pair[1])
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"op": "swap"}, "op must be one of"),
        ({"source": "mean"}, "mean_activation"),
        ({"op": "project"}, "needs basis"),
        ({"op": "project", "basis": torch.ones(4, 2)}, "orthonormal"),
        ({"positions": [1.5]}, "positions must be"),
        ({"heads": []}, "must not be empty"),
    ],
)
def test_bad_parameters_raise_at_construction(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        Intervention(RESID, **kwargs)


def test_training_mode_is_refused(pair):
    m = ReferenceTransformer(seed=0)  # training mode
    with pytest.raises(InvalidInputError, match=r"training mode.*model.eval\(\)"):
        with intervene(m, [Intervention(RESID, "zero")]):
            pass
    with pytest.raises(InvalidInputError, match="training mode"):
        record_activations(m, pair[0], [RESID])


def test_plain_module_has_no_components():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4)).eval()
    with pytest.raises(CapabilityError, match="pass sites="):
        detect_backend(net).component_site("resid_pre", 0)
