"""The Recorder against ground truth: what it stores is what the model computed."""

import ml_dtypes
import numpy as np
import pytest
import torch
from torch import nn

import dynalens
from dynalens.errors import (
    HookNotFiredError,
    InvalidParameterError,
    ShapeMismatchError,
    SiteNotFoundError,
)

from .conftest import MLP, hook_count, train


def test_activations_and_gradients_equal_autograd(tmp_path, mlp, data):
    """Recorded activations are the module outputs and recorded gradients are
    d loss / d outputs, exactly (computed independently with retain_grad)."""
    x, y = data
    ref = MLP()
    ref.act1, ref.act2 = nn.ReLU(), nn.ReLU()
    ref.load_state_dict(mlp.state_dict())
    with dynalens.Recorder(mlp, tmp_path / "s", sites=["fc1", "fc2", "head"], every=1) as rec:
        train(mlp, rec, x, y, steps=3)
    store = dynalens.open_store(tmp_path / "s")
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(3):
        idx = torch.arange(step * 8, (step + 1) * 8)
        h1 = ref.fc1(x[idx])
        h2 = ref.fc2(ref.act1(h1))
        out = ref.head(ref.act2(h2))
        for t in (h1, h2, out):
            t.retain_grad()
        loss = nn.functional.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        for site, t in (("fc1", h1), ("fc2", h2), ("head", out)):
            np.testing.assert_array_equal(store.activations(site, step), t.detach().numpy())
            np.testing.assert_array_equal(store.gradients(site, step), t.grad.numpy())
    assert store.steps().tolist() == [0, 1, 2]


def test_recording_leaves_outputs_bitwise_equal_and_removes_hooks(tmp_path, mlp, data):
    x, _ = data
    plain = mlp(x).detach().clone()
    rec = dynalens.Recorder(
        mlp,
        tmp_path / "s",
        sites=[nn.Linear, nn.ReLU],
        capture=("activations", "gradients", "inputs"),
    )
    assert hook_count(mlp) > 0
    hooked = mlp(x)
    hooked.sum().backward()
    rec.step(0)
    rec.close()
    assert torch.equal(plain, hooked.detach())
    assert hook_count(mlp) == 0
    rec.close()  # idempotent


def test_hooks_removed_when_the_loop_raises(tmp_path, mlp, data):
    x, _ = data
    with pytest.raises(RuntimeError, match="diverged"):
        with dynalens.Recorder(mlp, tmp_path / "s", sites="fc*"):
            mlp(x)
            raise RuntimeError("diverged")
    assert hook_count(mlp) == 0


def test_recorded_copy_is_not_changed_by_later_inplace_ops(tmp_path, mlp, data):
    """fc1's output is overwritten by ReLU(inplace=True); the record keeps negatives."""
    x, y = data
    expected = mlp.fc1(x[:8]).detach().clone()
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", capture=("activations",)) as rec:
        train(mlp, rec, x, y, steps=1)
    got = dynalens.open_store(tmp_path / "s").activations("fc1", 0)
    assert (got < 0).any()
    np.testing.assert_array_equal(got, expected.numpy())


def test_schedule_selects_recorded_steps(tmp_path, mlp, data):
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=[1, 4]) as rec:
        train(mlp, rec, x, y, steps=6)
    store = dynalens.open_store(tmp_path / "s")
    assert store.steps("fc1").tolist() == [1, 4]
    assert len(store.scalars()) == 6  # scalars at every step
    with pytest.raises(dynalens.errors.StepNotRecordedError, match=r"recorded steps: \[1, 4\]"):
        store.activations("fc1", 2)


def test_probe_set_activations_equal_eval_forward(tmp_path, data):
    x, y = data
    model = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.Tanh(), nn.Linear(5, 3))
    model.train()
    states = {}
    with dynalens.Recorder(
        model,
        tmp_path / "s",
        sites=["0", "2"],
        every=[0, 2],
        capture=(),
        probe=(x, y),
        probe_batch_size=7,
    ) as rec:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(3):
            states[step] = {k: v.clone() for k, v in model.state_dict().items()}
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step)
        assert model.training  # train mode restored after the probe passes
    store = dynalens.open_store(tmp_path / "s")
    px, py = store.probe()
    np.testing.assert_array_equal(px, x.numpy())
    np.testing.assert_array_equal(py, y.numpy())
    assert store.steps("2").tolist() == [0, 2]
    for step in (0, 2):
        ref = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.Tanh(), nn.Linear(5, 3))
        ref.load_state_dict(states[step])
        ref.eval()
        with torch.no_grad():
            expect = ref[2](ref[1](ref[0](x)))
        np.testing.assert_allclose(store.activations("2", step), expect.numpy(), rtol=0, atol=1e-6)
        assert store.activations("2", step, source="probe").shape == (40, 5)


def test_final_state_is_recorded_at_close_when_next_step_is_scheduled(tmp_path, data):
    x, y = data
    model = nn.Sequential(nn.Linear(6, 3))
    with dynalens.Recorder(model, tmp_path / "s", sites="0", every=2, capture=(), probe=x) as rec:
        train(model, rec, x, y, steps=4)
    store = dynalens.open_store(tmp_path / "s")
    assert store.steps().tolist() == [0, 2, 4]
    with torch.no_grad():
        final = model(x).numpy()
    np.testing.assert_allclose(store.activations("0", 4), final, atol=1e-6)


def test_row_subsampling_is_fixed_and_matches_sample_ids(tmp_path, mlp, data):
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", rows=3, every=1) as rec:
        params = []
        opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
        for step in range(3):
            idx = torch.randperm(40)[:8]
            params.append({k: v.clone() for k, v in mlp.state_dict().items()})
            loss = nn.functional.cross_entropy(mlp(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step, sample_ids=idx)
    store = dynalens.open_store(tmp_path / "s")
    ids = store.sample_ids()
    assert ids.shape == (3, 3)
    for step in range(3):
        w, b = params[step]["fc1.weight"], params[step]["fc1.bias"]
        expect = (x[torch.from_numpy(ids[step])] @ w.T + b).numpy()
        np.testing.assert_allclose(store.activations("fc1", step), expect, atol=1e-6)


def test_position_subsampling_of_sequence_sites(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Identity())
    x = torch.randn(5, 11, 4)
    with dynalens.Recorder(
        model, tmp_path / "s", sites="0", positions=3, capture=("activations",)
    ) as rec:
        out = model(x)
        rec.step(0)
        out = model(x)
        rec.step(1)
    store = dynalens.open_store(tmp_path / "s")
    a = store.activations("0")
    assert a.shape == (2, 5, 3, 4)
    full = out.detach().numpy()
    # the kept positions are the same at every step and are real positions of the output
    kept = [
        int(np.flatnonzero(np.all(np.isclose(full[0], a[0, 0, j]), axis=1))[0]) for j in range(3)
    ]
    assert kept == sorted(kept)
    np.testing.assert_allclose(a[1], full[:, kept], atol=1e-6)
    assert store.info()["sites"]["0"]["axes"] == ["batch", "pos", "feature"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_storage_dtypes_round_trip(tmp_path, mlp, data, dtype):
    x, y = data
    expect = mlp.fc2(mlp.act1(mlp.fc1(x[:8]))).detach()
    with dynalens.Recorder(
        mlp, tmp_path / "s", sites="fc2", dtype=dtype, capture=("activations",)
    ) as rec:
        train(mlp, rec, x, y, steps=1)
    store = dynalens.open_store(tmp_path / "s")
    tdt = getattr(torch, dtype)
    as_torch = store.activations("fc2", 0, torch=True)
    assert as_torch.dtype == tdt
    assert torch.equal(as_torch, expect.to(tdt))
    as_np = store.activations("fc2", 0)
    want = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    assert as_np.dtype == want
    if dtype == "bfloat16":  # on disk: a uint16 view with its logical dtype in metadata
        import zarr

        arr = zarr.open_array(str(tmp_path / "s" / store.run / "rank0" / "activations" / "fc2"))
        assert arr.dtype == np.uint16 and arr.attrs["logical_dtype"] == "bfloat16"


def test_param_grads_and_inputs(tmp_path, mlp, data):
    x, y = data
    expect_in = mlp.act1(mlp.fc1(x[:8])).detach().clone()
    with dynalens.Recorder(
        mlp, tmp_path / "s", sites="fc2", capture=("inputs", "param_grads")
    ) as rec:
        out = mlp(x[:8])
        nn.functional.cross_entropy(out, y[:8]).backward()
        grad_w = mlp.fc2.weight.grad.clone()
        rec.step(0)
    store = dynalens.open_store(tmp_path / "s")
    np.testing.assert_array_equal(store.param_grads("fc2", "weight", 0), grad_w.numpy())
    assert store.param_grads("fc2", "bias", 0).shape == (8,)
    np.testing.assert_allclose(store.inputs("fc2", 0), expect_in.numpy(), atol=1e-6)


def test_liveness_check_names_silent_sites_and_removes_hooks(tmp_path, data):
    x, y = data

    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(6, 3), nn.Linear(6, 3)

        def forward(self, x):
            return self.used(x)

    model = Partial()
    rec = dynalens.Recorder(model, tmp_path / "s", sites=["used", "unused"])
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(HookNotFiredError, match=r"\['unused'\].*never called|\['unused'\]"):
        rec.step(0)
    assert hook_count(model) == 0


@pytest.mark.slow
def test_liveness_check_catches_hooks_skipped_by_torch_compile(tmp_path, data):
    """Hooks added after torch.compile traced the model never run (reproduced on torch
    2.13); the Recorder says so and names the fix instead of recording nothing."""
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    compiled = torch.compile(model, backend="eager")
    compiled(data[0])
    rec = dynalens.Recorder(compiled, tmp_path / "s", sites=["_orig_mod.0", "_orig_mod.2"])
    compiled(data[0])
    with pytest.raises(HookNotFiredError, match=r"torch\.compile'd.*before compiling"):
        rec.step(0)
    assert hook_count(model) == 0


def test_shape_change_between_steps_is_a_clear_error(tmp_path):
    """A change of a non-batch axis (here the sequence length) cannot be stacked: a clear
    error. (A change of the batch axis is a ragged batch: skipped with a warning, see
    test_keep_accepted.py.)"""
    model = nn.Sequential(nn.Linear(4, 3))
    rec = dynalens.Recorder(model, tmp_path / "s", sites="0", capture=("activations",))
    model(torch.randn(2, 5, 4))
    rec.step(0)
    model(torch.randn(2, 6, 4))
    with pytest.raises(ShapeMismatchError, match="rows=N"):
        rec.step(1)
    assert hook_count(model) == 0
    assert dynalens.open_store(tmp_path / "s").steps().tolist() == [0]  # step 0 kept


def test_batch_smaller_than_rows_is_skipped_with_a_warning(tmp_path, mlp, data):
    rec = dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", rows=16, capture=("activations",))
    mlp(data[0][:8])
    with pytest.warns(UserWarning, match="ragged last batch"):
        rec.step(0)
    mlp(data[0][:20])
    rec.step(1)
    rec.close()
    assert dynalens.open_store(tmp_path / "s").steps("fc1").tolist() == [1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"capture": ("activations", "weights")}, "capture must be one of"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"every": 0}, "every must be >= 1"),
        ({"rows": 0}, "rows must be >= 1"),
        ({"capture": ()}, "nothing to record"),
        ({"compression": "gzip"}, "compression must be one of"),
        ({"axes": {"fc9": ("batch", "feature")}}, "not recorded"),
        ({"probe": (torch.zeros(4, 6), torch.zeros(3))}, "probe X has 4 rows but Y has 3"),
    ],
)
def test_bad_parameters_are_refused_at_construction(tmp_path, mlp, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", **kwargs)
    assert hook_count(mlp) == 0


def test_unknown_site_at_construction(tmp_path, mlp):
    with pytest.raises(SiteNotFoundError, match="did you mean 'head'"):
        dynalens.Recorder(mlp, tmp_path / "s", sites="haed")


def test_non_numeric_scalar(tmp_path, mlp):
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=[5]) as rec:
        with pytest.raises(InvalidParameterError, match="scalar 'note'"):
            rec.step(0, note="hello")


def test_axes_override_and_declared_axes(tmp_path, mlp, data):
    x, y = data
    with dynalens.Recorder(
        mlp, tmp_path / "s", sites="fc1", axes={"fc1": ("sample", "unit")}, capture=("activations",)
    ) as rec:
        train(mlp, rec, x, y, steps=1)
    store = dynalens.open_store(tmp_path / "s")
    assert store.info()["sites"]["fc1"]["axes"] == ["sample", "unit"]
    import zarr

    arr = zarr.open_array(str(tmp_path / "s" / store.run / "rank0" / "activations" / "fc1"))
    assert arr.metadata.dimension_names == ("record", "sample", "unit")


def test_repeated_calls_keep_the_first_and_warn(tmp_path, data):
    shared = nn.Linear(6, 6)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    first = shared(data[0][:4]).detach()
    with dynalens.Recorder(model, tmp_path / "s", sites="0", capture=("activations",)) as rec:
        model(data[0][:4])
        with pytest.warns(UserWarning, match="ran 2 times"):
            rec.step(0)
    np.testing.assert_allclose(
        dynalens.open_store(tmp_path / "s").activations("0", 0), first.numpy()
    )


def test_runs_are_added_to_an_existing_store(tmp_path, mlp, data):
    x, y = data
    for _ in range(2):
        with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1") as rec:
            train(mlp, rec, x, y, steps=1)
    store = dynalens.open_store(tmp_path / "s")
    assert store.runs == ["run-000", "run-001"] and store.run == "run-001"
    assert store.select("run-000").steps().tolist() == [0]
    with pytest.raises(dynalens.errors.StoreError, match="already exists"):
        dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", run="run-000")


def test_evaluation_passes_under_no_grad_are_not_the_training_batch(tmp_path, mlp, data):
    """A validation forward between steps must not be recorded in place of the next
    training batch (regression: the first forward after step() used to be taken)."""
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", capture=("activations",)) as rec:
        with torch.no_grad():
            mlp(x[20:28])  # evaluation
            expected = mlp.fc1(x[:8]).clone()
        train(mlp, rec, x, y, steps=1)
    got = dynalens.open_store(tmp_path / "s").activations("fc1", 0)
    np.testing.assert_array_equal(got, expected.numpy())
