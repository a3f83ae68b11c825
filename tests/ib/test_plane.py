"""The information plane against exact values, caching, and errors."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dynalens
from dynalens.errors import InvalidInputError, SiteNotFoundError
from dynalens.ib.plane import information_plane


class Quantizer(nn.Module):
    """Deterministic discrete layer: T = floor(x . w) mod m, so H(T) is exact by counting."""

    def __init__(self, modulus: int) -> None:
        super().__init__()
        self.m = modulus
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        code = (x @ (2 ** torch.arange(x.shape[1] - 1, -1, -1, dtype=x.dtype))) % self.m
        return torch.stack([code, code * 0], 1) * self.scale


def entropy_of(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True, axis=0)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.fixture
def discrete_store(tmp_path):
    """A run whose layers are discrete functions of 8-bit inputs: I(X;T) = H(T) and
    I(T;Y) = H(T) - H(T|Y) exactly."""
    x = torch.from_numpy(((np.arange(256)[:, None] >> np.arange(7, -1, -1)) & 1).astype(np.float32))
    y = (torch.arange(256) % 3 == 0).long()
    model = nn.Sequential(Quantizer(5), nn.Identity())
    with dynalens.Recorder(
        model, tmp_path / "s", sites=["0"], every=[0, 1], capture=(), probe=(x, y)
    ) as rec:
        with torch.no_grad():  # what an optimizer step would do before rec.step(0):
            model[0].scale.mul_(2.0)  # step 1 sees a rescaled, equally informative layer
        rec.step(0)
        rec.step(1)
    return tmp_path / "s", x.numpy(), y.numpy()


def test_binning_plane_equals_exact_entropies(discrete_store):
    path, x, y = discrete_store
    table = information_plane(path, estimator="binning", params={"n_bins": 64}, progress=False)
    codes = (x @ (2 ** np.arange(7, -1, -1))) % 5
    h_t = entropy_of(codes)
    h_t_given_y = sum((y == k).mean() * entropy_of(codes[y == k]) for k in (0, 1))
    assert list(table["step"]) == [0, 1]
    np.testing.assert_allclose(table["I_XT"], h_t, atol=1e-12)
    np.testing.assert_allclose(table["I_TY"], h_t - h_t_given_y, atol=1e-12)
    assert set(table.columns) >= {"run", "site", "layer", "epoch", "I_XT_lower", "I_TY_stderr"}
    assert table["layer"].tolist() == [1, 1]
    assert math.isnan(table["I_XT_lower"].iloc[0])  # binning has no bounds


def test_noisy_plane_has_standard_errors_and_is_below_log_n(discrete_store):
    path, x, _ = discrete_store
    table = information_plane(path, estimator="noisy", noise_var=0.05, progress=False)
    assert (table["I_XT_stderr"] > 0).all()
    assert (table["I_XT"] <= math.log(len(x)) + 1e-9).all()
    # more scale = the codes further apart relative to the noise = more information
    assert table["I_XT"].iloc[1] > table["I_XT"].iloc[0]


def test_cache_is_reused_and_extended(discrete_store, monkeypatch):
    path, _, _ = discrete_store
    first = information_plane(path, estimator="binning", steps=[0], progress=False)
    calls = []
    from dynalens.estimators.mi import BinningMI

    real = BinningMI.estimate

    def counting(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(BinningMI, "estimate", counting)
    both = information_plane(path, estimator="binning", progress=False)
    assert len(calls) == 2  # only step 1 was computed (I_XT and I_TY)
    assert both["I_XT"].iloc[0] == first["I_XT"].iloc[0]
    again = information_plane(path, estimator="binning", progress=False)
    assert len(calls) == 2 and again.equals(both)
    other = information_plane(path, estimator="binning", params={"n_bins": 3}, progress=False)
    assert len(calls) == 6  # other parameters: another cache entry
    assert not other["I_XT"].equals(both["I_XT"])


def test_errors(tmp_path, discrete_store):
    path, _, _ = discrete_store
    with pytest.raises(SiteNotFoundError, match="no probe activations"):
        information_plane(path, sites=["1"], progress=False)
    model = nn.Sequential(nn.Linear(3, 2))
    with dynalens.Recorder(model, tmp_path / "noprobe", sites="0") as rec:
        model(torch.randn(4, 3)).sum().backward()
        rec.step(0)
    with pytest.raises(SiteNotFoundError, match="probe set"):
        information_plane(tmp_path / "noprobe", progress=False)
    with pytest.raises(dynalens.errors.InvalidParameterError, match="unknown method"):
        information_plane(path, estimator="binnig", progress=False)


def test_saturated_binning_warns_once(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(300, 6)
    model = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
    with dynalens.Recorder(
        model, tmp_path / "s", sites="1", every=[0, 1], capture=(), probe=x
    ) as rec:
        rec.step(0)
        rec.step(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = information_plane(tmp_path / "s", estimator="binning", progress=False)
    msgs = [str(w.message) for w in caught if "binned the layer" in str(w.message)]
    assert len(msgs) == 1 and "2 of 2" in msgs[0]
    assert table["I_TY"].isna().all()  # no labels: I(T;Y) is NaN


def test_figure_has_one_trace_per_layer(discrete_store):
    from dynalens.ib.figures import plot_information_plane

    path, _, _ = discrete_store
    table = information_plane(path, estimator="noisy", noise_var=0.05, progress=False)
    fig = plot_information_plane(table, units="nats")
    assert len(fig.data) == 1
    np.testing.assert_allclose(fig.data[0].x, table["I_XT"])
    assert fig.data[0].error_x.array is None  # noisy gives a standard error, not bounds
    bits = plot_information_plane(table)
    np.testing.assert_allclose(np.asarray(bits.data[0].x) * math.log(2), table["I_XT"])


def test_empty_probe_run_is_refused(tmp_path):
    with pytest.raises(InvalidInputError):
        from dynalens.ib.plane import _estimator

        _estimator("binning", None, None).estimate(np.zeros((0, 2)), np.zeros((0, 2)))
