"""The per-step hot path of the live instrument: the single-pass means, hooks parked
between measured steps, and the trusted Linear norms, against the general paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _dyn_models import ce, mlp

from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor
from dynalens.dynamics.grad_capture import CaptureMeans, LazyMeans
from dynalens.dynamics.per_example import PerExampleGradNorms
from dynalens.kernels.ghost_norm import layer_sq_norms, linear_sq_norms
from dynalens.probe.hooks import HookSet


def _data(seed: int, B: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 7, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 4, (B,), generator=g)


def _means_both_ways(engine: PerExampleGradNorms) -> tuple[CaptureMeans, CaptureMeans]:
    general = CaptureMeans.from_capture(engine.collect(reset=False), engine.param_names_)
    fast = engine.collect_means()
    return fast, general


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_single_pass_means_equal_the_general_path(reduction: str) -> None:
    model = mlp()
    engine = PerExampleGradNorms(model, reduction=reduction, loss_scale=0.5).attach()
    x, y = _data(0)
    loss = ce(model(x), y)
    (0.5 * (loss.mean() if reduction == "mean" else loss.sum())).backward()
    assert isinstance(engine.collect_means(reset=False, lazy=True), LazyMeans)  # short path
    fast, general = _means_both_ways(engine)
    assert fast.per_example_mean is not None and general.per_example_mean is not None
    np.testing.assert_allclose(fast.per_example_mean, general.per_example_mean, rtol=1e-12)
    np.testing.assert_allclose(fast.batch_grad_sq, general.batch_grad_sq, rtol=1e-12)
    np.testing.assert_array_equal(fast.batch_size, general.batch_size)
    assert fast.n_examples == general.n_examples == 8
    # and both are the per-example loop's values
    per = []
    for i in range(8):
        model.zero_grad()
        ce(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        per.append([float(p.grad.pow(2).sum()) for p in model.parameters()])
    np.testing.assert_allclose(fast.per_example_mean, np.mean(per, 0), rtol=1e-10)
    engine.detach()


def test_accumulated_passes_take_the_general_path() -> None:
    model = mlp()
    engine = PerExampleGradNorms(model, loss_scale=0.5).attach()
    x, y = _data(1)
    for k in range(2):
        (0.5 * ce(model(x[4 * k : 4 * k + 4]), y[4 * k : 4 * k + 4]).mean()).backward()
    assert isinstance(engine.collect_means(reset=False, lazy=True), CaptureMeans)
    want = CaptureMeans.from_capture(engine.collect(reset=False), engine.param_names_)
    got = engine.collect_means()
    assert got.pass_sizes == [4, 4] and got.n_examples == 8
    np.testing.assert_allclose(got.batch_grad_sq, want.batch_grad_sq, rtol=1e-12)
    engine.detach()


def _train(gns: GradientNoiseScaleMonitor, model: torch.nn.Module, steps: int) -> list[int]:
    hooked = []
    for s in range(steps):
        x, y = _data(10 + s)
        hooked.append(sum(len(m._forward_hooks) for m in model.modules()))
        model.zero_grad()
        ce(model(x), y).mean().backward()
        gns.step()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
    return hooked


def test_hooks_are_parked_between_measured_steps_with_equal_results() -> None:
    sparse_model, dense_model = mlp(), mlp()
    measured = [0, 1, 7, 8, 20]
    sparse = GradientNoiseScaleMonitor(sparse_model, every=measured, beta=0.9).attach()
    hooked = _train(sparse, sparse_model, 24)
    # hooks only where needed: on before each measured step, off over idle runs
    assert all(hooked[s] == 3 for s in measured)
    assert hooked[3] == 0 and hooked[12] == 0
    # the same steps measured with hooks kept on all the time (every step "measured"
    # at the same points by a schedule that never parks: every=1 filtered by history)
    dense = GradientNoiseScaleMonitor(dense_model, every=measured, beta=0.9).attach()
    dense._arm = lambda engine: setattr(  # type: ignore[method-assign]
        engine, "active", dense.schedule_(dense._next)
    )
    _train(dense, dense_model, 24)
    assert [h.step for h in sparse.history] == measured
    assert sparse.compute() == pytest.approx(dense.compute(), rel=1e-12)
    sparse.detach()
    dense.detach()
    assert sum(len(m._forward_hooks) for m in sparse_model.modules()) == 0


def test_parking_with_a_shared_hookset_does_not_grow_it() -> None:
    model = mlp()
    shared = HookSet()
    gns = GradientNoiseScaleMonitor(model, every=5, hooks=shared).attach()
    _train(gns, model, 30)
    assert len(shared) <= 3  # the engine's forward hooks, re-registered, never piled up
    gns.detach()
    assert len(shared) == 0
    shared.remove()


@pytest.mark.parametrize("shape", [(6, 5), (6, 1, 5), (6, 9, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_layer_sq_norms_equal_the_checked_entry_point(shape: tuple[int, ...], bias: bool) -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(*shape, generator=g, dtype=torch.float64)
    out = torch.randn(*shape[:-1], 4, generator=g, dtype=torch.float64)
    w, b = layer_sq_norms(a, out, bias)
    ref_w = linear_sq_norms(a, out, backend="reference")
    torch.testing.assert_close(w, ref_w, rtol=1e-12, atol=0)
    if bias:
        assert b is not None
        gs = out if out.ndim == 2 else out.sum(1)
        torch.testing.assert_close(b, gs.pow(2).sum(1), rtol=1e-12, atol=0)
    else:
        assert b is None


def test_half_precision_gradient_norm_accumulates_in_float32() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 3).to(torch.bfloat16)
    engine = PerExampleGradNorms(model, reduction="sum").attach()
    x = torch.randn(16, 64).to(torch.bfloat16)
    model(x).float().pow(2).sum().backward()
    means = engine.collect_means()
    assert model.weight.grad is not None
    exact = float(model.weight.grad.float().pow(2).sum()) / 16**2  # |G_B|² of the mean
    k = engine.param_names_.index("weight")
    assert means.batch_grad_sq[k] == pytest.approx(exact, rel=1e-5)
    engine.detach()


class _MixedPrecision(torch.nn.Module):
    """A float32 layer feeding a float64 one: rows and dots of two dtypes in one step."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(7, 5)
        self.b = torch.nn.Linear(5, 4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)).double())


def test_blocks_of_steps_with_mixed_dtypes_equal_the_general_path() -> None:
    """Lazy steps of a mixed-precision model are stacked together (float32 rows promoted
    exactly) and give the general path's means, step by step."""
    from dynalens.dynamics.grad_capture import resolve_means

    model = _MixedPrecision()
    engine = PerExampleGradNorms(model).attach()
    lazy, general = [], []
    for seed in range(3):
        x, y = _data(seed)
        model.zero_grad()
        ce(model(x.float()), y).mean().backward()
        general.append(CaptureMeans.from_capture(engine.collect(reset=False), engine.param_names_))
        lazy.append(engine.collect_means(lazy=True))
    assert all(isinstance(m, LazyMeans) for m in lazy)
    block = resolve_means(lazy)
    assert block.per_example_mean is not None
    for k, want in enumerate(general):
        assert want.per_example_mean is not None
        np.testing.assert_allclose(block.per_example_mean[k], want.per_example_mean, rtol=1e-12)
        np.testing.assert_allclose(block.batch_grad_sq[k], want.batch_grad_sq, rtol=1e-12)
    engine.detach()


def test_forward_without_backward_before_a_step_keeps_the_norms_exact() -> None:
    """A forward whose output never gets a gradient (evaluation with grad enabled) makes
    the next call of each layer its second in the pass: the norms then take the general
    path and still equal the per-example loop."""
    model = mlp()
    engine = PerExampleGradNorms(model).attach()
    x, y = _data(5)
    model(x)  # no backward
    ce(model(x), y).mean().backward()
    got = engine.collect_means()
    engine.detach()
    per = []
    for i in range(8):
        model.zero_grad()
        ce(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        per.append([float(p.grad.pow(2).sum()) for p in model.parameters()])
    assert got.per_example_mean is not None
    np.testing.assert_allclose(got.per_example_mean, np.mean(per, 0), rtol=1e-10)


@pytest.mark.parametrize("shape", [(5, 9, 6, 4), (5, 3, 6, 7)])  # materialise, ghost
def test_workspace_gives_the_same_norms_and_is_reused(shape: tuple[int, ...]) -> None:
    from dynalens.kernels.ghost_norm import Workspace, ghost_is_cheaper

    B, T, d_in, d_out = shape
    g = torch.Generator().manual_seed(4)
    ws = Workspace()
    for scale in (1, 2):  # a larger call regrows the buffers, a smaller one reuses them
        a = torch.randn(B * scale, T, d_in, generator=g, dtype=torch.float64)
        out = torch.randn(B * scale, T, d_out, generator=g, dtype=torch.float64)
        w, b = layer_sq_norms(a, out, True, ws)
        w0, b0 = layer_sq_norms(a, out, True)
        torch.testing.assert_close(w, w0, rtol=1e-12, atol=0)
        assert b is not None and b0 is not None
        torch.testing.assert_close(b, b0, rtol=1e-12, atol=0)
    names = {"gram_a", "gram_g"} if ghost_is_cheaper(T, d_in, d_out) else {"w"}
    assert set(ws._bufs) == names
    first = {k: v.data_ptr() for k, v in ws._bufs.items()}
    a, out = (
        torch.randn(B, T, d_in, dtype=torch.float64),
        torch.randn(B, T, d_out, dtype=torch.float64),
    )
    layer_sq_norms(a, out, False, ws)
    assert {k: v.data_ptr() for k, v in ws._bufs.items()} == first  # no new allocation


class _Checkpointed(torch.nn.Module):
    """The first layer under non-reentrant activation checkpointing: its forward hook fires
    again when backward recomputes it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(7, 6)
        self.b = torch.nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, checkpointed: bool = True) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        def first(t: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.a(t))

        h = checkpoint(first, x, use_reentrant=False) if checkpointed else first(x)
        return self.b(h)


def test_activation_checkpointing_keeps_the_norms_exact() -> None:
    model = _Checkpointed().double()
    engine = PerExampleGradNorms(model, reduction="sum").attach()
    for seed in range(2):  # a second step: the per-pass call counts were reset
        x, y = _data(seed)
        model.zero_grad()
        ce(model(x), y).sum().backward()
        got = engine.collect()
        engine.active = False  # the per-example loop below is not measured
        for name, p in model.named_parameters():
            per = []
            for i in range(8):
                g = torch.autograd.grad(ce(model(x[i : i + 1], False), y[i : i + 1]).sum(), p)
                per.append(float(g[0].pow(2).sum()))
            np.testing.assert_allclose(got.per_example[name].numpy(), per, rtol=1e-10)
        engine.active = True
    engine.detach()
