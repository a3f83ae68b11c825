"""Energy-based CBMs: exact enumeration against float64 loops and a known joint table."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from dynalens.concepts import make_tabular_concepts
from dynalens.concepts.models import EnergyCBM, fit_energy_cbm
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import intervention_curve


class TableEnergy(nn.Module):
    """E(c, y) = table[index of c, y], float64."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.k = table.shape[0].bit_length() - 1

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        powers = 2 ** torch.arange(self.k - 1, -1, -1)
        return self.table[(c.round().long() * powers).sum(1)]


def _model(k: int = 3, t: int = 2, seed: int = 0, table: torch.Tensor | None = None):
    torch.manual_seed(seed)
    glob = TableEnergy(table) if table is not None else None
    return EnergyCBM(nn.Linear(5, 6), 6, k, t, global_energy=glob, lambda_c=0.7, lambda_g=1.3)


def test_energies_of_a_known_joint_table_reproduce_it_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    joint = torch.rand(8, 3, generator=g, dtype=torch.float64) + 0.05  # P(c, y), k = 3, T = 3
    joint /= joint.sum()
    p_c_given_y = (joint / joint.sum(0)).T  # (T, 8)
    model = _model(3, 3, table=-torch.log(p_c_given_y.T))
    out = model.concept_given_class(prior=joint.sum(0))
    torch.testing.assert_close(out["p_c_given_y"], p_c_given_y, rtol=0, atol=1e-14)
    configs = torch.tensor(list(itertools.product([0, 1], repeat=3)), dtype=torch.float64)
    for t in range(3):
        for i in range(3):
            marg = sum(float(p_c_given_y[t, m]) for m in range(8) if configs[m, i] == 1)
            assert abs(float(out["marginal"][t, i]) - marg) < 1e-14
            for j in range(3):
                both = sum(float(p_c_given_y[t, m]) for m in range(8)
                           if configs[m, i] == 1 and configs[m, j] == 1)  # fmt: skip
                given = both / sum(float(p_c_given_y[t, m]) for m in range(8) if configs[m, j] == 1)
                assert abs(float(out["given_class_and_concept"][t, i, j]) - given) < 1e-13
    # p(c_i | c_j) under the table's own class prior = the table's conditional
    for i in range(3):
        for j in range(3):
            num = float(joint[(configs[:, i] == 1) & (configs[:, j] == 1)].sum())
            den = float(joint[configs[:, j] == 1].sum())
            assert abs(float(out["given_concept"][i, j]) - num / den) < 1e-13


def _brute_energy(model: EnergyCBM, x: torch.Tensor) -> torch.Tensor:
    """E(x, c, y) by a float64 loop, (n, 2^k, T)."""
    with torch.no_grad():
        e_y, e_c = (e.double() for e in model.energies(x))
        e_g = model.global_energies().double()
    n, k, t = x.shape[0], model.k, model.n_classes
    out = torch.zeros(n, 2**k, t, dtype=torch.float64)
    for i in range(n):
        for m, cfg in enumerate(itertools.product([0, 1], repeat=k)):
            for y in range(t):
                conc = sum(float(e_c[i, j, v]) for j, v in enumerate(cfg))
                out[i, m, y] = e_y[i, y] + model.lambda_c * conc + model.lambda_g * e_g[m, y]
    return out


def test_joint_and_conditioned_posteriors_equal_enumeration_by_hand() -> None:
    model = _model(3, 2, seed=1)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(2))
    energy = _brute_energy(model, x)
    p = torch.softmax(-energy.flatten(1), 1).view_as(energy)
    torch.testing.assert_close(model.log_joint(x).exp(), p, rtol=1e-12, atol=1e-12)
    written = torch.tensor([[True, False, True]] * 7)
    values = torch.tensor([[1.0, 0.3, 0.0]] * 7)
    keep = torch.tensor([m for m, cfg in enumerate(itertools.product([0, 1], repeat=3))
                         if cfg[0] == 1 and cfg[2] == 0])  # fmt: skip
    cond = p[:, keep] / p[:, keep].sum((1, 2), keepdim=True)
    log_y, p_c = model.posterior(x, values, written)
    torch.testing.assert_close(log_y.exp(), cond.sum(1), rtol=1e-12, atol=1e-12)
    cfgs = torch.tensor(list(itertools.product([0, 1], repeat=3)), dtype=torch.float64)[keep]
    torch.testing.assert_close(p_c, torch.einsum("nmt,mk->nk", cond, cfgs), rtol=1e-12, atol=1e-12)
    best, arg = model.posterior(x, values, written, inference="map")
    torch.testing.assert_close(best, -energy[:, keep].amin(1), rtol=1e-12, atol=1e-12)
    flat = energy[:, keep].flatten(1).argmin(1)
    assert torch.equal(arg, cfgs[flat // 2])


def test_energy_model_through_the_intervention_engine() -> None:
    d = make_tabular_concepts(300, seed=0, input_noise=1.0)
    keep = [0, 1, 2, 3, 4, 5]  # shape and colour groups: k = 6
    c = d.c[:, keep]
    torch.manual_seed(0)
    model = EnergyCBM(nn.Sequential(nn.Linear(16, 32), nn.ReLU()), 32, 6, 4)
    fit_energy_cbm(model, d.x, c, d.y, epochs=60)
    with torch.no_grad():
        p = model.concepts(d.x)
    res = intervention_curve(model.concept_task(d.x), p, c, d.y, groups=[[0, 1, 2], [3, 4, 5]])
    curve = res.details["curve"]
    # a(0): the joint's marginal p(y | x); a(G): p(y | x, c) with every concept written
    log_y, _ = model.posterior(d.x)
    assert float(curve[0]) == float((log_y.argmax(1) == d.y).double().mean())
    log_y, _ = model.posterior(d.x, c.double(), torch.ones_like(c, dtype=torch.bool))
    assert float(curve[-1]) == float((log_y.argmax(1) == d.y).double().mean())


def test_bad_sizes_and_inputs_are_refused() -> None:
    with pytest.raises(InvalidParameterError, match="n_concepts"):
        EnergyCBM(nn.Linear(3, 4), 4, 0, 2)
    model = _model()
    with pytest.raises(InvalidInputError, match="values and written"):
        model.posterior(torch.zeros(2, 5), torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(InvalidParameterError, match="prior"):
        model.concept_given_class(prior=[0.2, 0.2])


def test_gradient_inference_reaches_the_exact_minimiser_without_coupling() -> None:
    # lambda_g = 0: the relaxed energy is linear in each simplex, so descent ends at the
    # vertex of the exact MAP
    model = _model(3, 4, seed=5)
    model.lambda_g = 0.0
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(6))
    written = torch.zeros(30, 3, dtype=torch.bool)
    written[:, 1] = True
    values = torch.ones(30, 3)
    best, arg = model.posterior(x, values, written, inference="map")
    log_y, c_soft = model.posterior(x, values, written, inference="gradient")
    assert torch.equal(log_y.argmax(1), best.argmax(1))
    assert torch.equal((c_soft > 0.5).double(), arg)
    assert bool((c_soft[:, 1] == 1).all())  # the written concept stays written
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was


def test_gradient_inference_through_the_engine_agrees_with_map_on_most_rows() -> None:
    d = make_tabular_concepts(120, seed=0, input_noise=1.0)
    c = d.c[:, :6]
    torch.manual_seed(0)
    model = EnergyCBM(nn.Sequential(nn.Linear(16, 32), nn.ReLU()), 32, 6, 4)
    fit_energy_cbm(model, d.x, c, d.y, epochs=30)
    with torch.no_grad():
        p = model.concepts(d.x)
    groups = [[0, 1, 2], [3, 4, 5]]
    grad = intervention_curve(model.concept_task(d.x, inference="gradient"), p, c, d.y,
                              groups=groups, policy="uncertainty")  # fmt: skip
    exact = intervention_curve(model.concept_task(d.x, inference="map"), p, c, d.y,
                               groups=groups, policy="uncertainty")  # fmt: skip
    assert (grad.details["curve"] - exact.details["curve"]).abs().max() < 0.05
