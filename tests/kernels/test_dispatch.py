"""Backend choice: fallback on CPU, DYNALENS_DISABLE_TRITON, explicit backend=, lazy imports."""

from __future__ import annotations

import types

import pytest
import torch

from dynalens.errors import InvalidParameterError
from dynalens.kernels import _dispatch
from dynalens.kernels.gauss_lse import gauss_lse
from dynalens.kernels.knn import knn_distances
from tests.kernels.conftest import TRITON_USABLE


def _fake_cuda() -> types.SimpleNamespace:
    return types.SimpleNamespace(is_cuda=True, device="cuda:0")


def test_auto_uses_the_fallback_on_cpu(monkeypatch):
    def boom(name):
        raise AssertionError(f"the Triton module {name} must not be loaded for CPU tensors")

    monkeypatch.setattr("dynalens.kernels.knn.triton_module", boom)
    monkeypatch.setattr("dynalens.kernels.gauss_lse.triton_module", boom)
    x = torch.randn(30, 3)
    assert _dispatch.choose_backend("auto", x) == "torch"
    torch.testing.assert_close(knn_distances(x, 2), knn_distances(x, 2, backend="torch"))
    torch.testing.assert_close(gauss_lse(x, var=1.0), gauss_lse(x, var=1.0, backend="torch"))


def test_auto_picks_triton_for_cuda_unless_disabled(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    monkeypatch.delenv("DYNALENS_DISABLE_TRITON", raising=False)
    assert _dispatch.choose_backend("auto", _fake_cuda()) == "triton"
    monkeypatch.setenv("DYNALENS_DISABLE_TRITON", "1")
    assert _dispatch.choose_backend("auto", _fake_cuda()) == "torch"
    monkeypatch.setenv("DYNALENS_DISABLE_TRITON", "0")
    assert _dispatch.choose_backend("auto", _fake_cuda()) == "triton"
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    assert _dispatch.choose_backend("auto", _fake_cuda()) == "torch"
    # one CPU tensor among CUDA ones -> fallback
    assert _dispatch.choose_backend("auto", _fake_cuda(), torch.zeros(1)) == "torch"


def test_explicit_backend_is_honoured(monkeypatch):
    x = torch.randn(25, 2)
    for name in ("reference", "torch"):
        assert _dispatch.choose_backend(name, x) == name
    monkeypatch.setattr(_dispatch, "interpreter_active", lambda: False)
    with pytest.raises(InvalidParameterError, match="backend='triton' needs CUDA tensors"):
        knn_distances(x, 2, backend="triton")
    with pytest.raises(InvalidParameterError, match="backend must be one of"):
        _dispatch.choose_backend("gpu", x)


@pytest.mark.skipif(not TRITON_USABLE, reason="needs triton and the interpreter (or CUDA)")
def test_explicit_triton_wins_over_disable_env(monkeypatch):
    monkeypatch.setenv("DYNALENS_DISABLE_TRITON", "1")
    x = torch.randn(40, 3)
    assert _dispatch.choose_backend("triton", x) == "triton"
    torch.testing.assert_close(
        knn_distances(x, 3, backend="triton"), knn_distances(x, 3, backend="reference").float()
    )


def test_work_models_are_positive_and_scale():
    from dynalens.kernels import binning, gauss_lse, ghost_norm, knn

    w1, w2 = gauss_lse.work(1000, 1000, 32), gauss_lse.work(2000, 2000, 32)
    assert w2.flops == pytest.approx(4 * w1.flops) and w2.exps == 4 * w1.exps
    floor = w1.floor_s(3.35e12, 67e12, 3.9e12)
    assert floor == pytest.approx(max(w1.bytes / 3.35e12, w1.flops / 67e12, w1.exps / 3.9e12))
    assert knn.work(100, 3, 2).flops > 0 and binning.work(10, 2, 8).bytes > 0
    assert ghost_norm.work(4, 8, 16, 16).flops < ghost_norm.work(4, 64, 16, 16).flops
