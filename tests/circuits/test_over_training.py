"""Sweeps over a run's stored checkpoints: exact, cached in the store, clear errors
(issue 12, section 4)."""

import pandas as pd
import pytest
import torch

import dynalens
from dynalens.circuits import (
    ReferenceConfig,
    ReferenceTransformer,
    activation_patching,
    logit_diff,
    named_metric,
    over_training,
)
from dynalens.circuits.over_training import result_table
from dynalens.errors import (
    InvalidInputError,
    InvalidParameterError,
    SiteNotFoundError,
    StepNotRecordedError,
)

CFG = ReferenceConfig(n_layers=2, d_model=16, n_heads=2, d_vocab=20, n_ctx=8, d_mlp=None)
STEPS = [0, 1, 3, 6]


def build():
    return ReferenceTransformer(CFG, seed=5)


def train(path, checkpoints=STEPS):
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    g = torch.Generator().manual_seed(0)
    rec = dynalens.Recorder(model, path, sites="unembed", every=100, checkpoints=checkpoints)
    for step in range(6):
        x = torch.randint(0, 20, (8, 6), generator=g)
        loss = torch.nn.functional.cross_entropy(
            model(x)[:, :-1].reshape(-1, 20), x[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(step, loss=loss.item())
    rec.close()
    return dynalens.open_store(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return train(tmp_path_factory.mktemp("ot") / "run")


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(2)
    clean = torch.randint(0, 20, (4, 6), generator=g)
    corrupt = clean.clone()
    corrupt[:, 1] = (corrupt[:, 1] + 5) % 20
    metric = logit_diff(clean[:, 1], corrupt[:, 1])
    return {"clean": clean, "corrupt": corrupt}, {
        "metric": metric,
        "components": ["head_out", "resid_pre"],
        "positions": "all",
    }


def test_equals_the_analysis_run_by_hand_on_each_checkpoint(store, task):
    inputs, params = task
    table = over_training(
        store, build, "activation_patching", inputs, params=params, cache=False, progress=False
    )
    assert table["step"].unique().tolist() == STEPS
    assert (table["metric"] == "logit_diff").all()
    for step in STEPS:
        model = store.load_checkpoint(step, into=build()).eval()
        by_hand = result_table(activation_patching(model, **inputs, **params))
        got = table[table["step"] == step].drop(columns=["step", "metric"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, by_hand, check_exact=True)
    # the weights really change over training, so the rows do too
    first, last = (table[table["step"] == s]["value"].to_numpy() for s in (0, 6))
    assert (first != last).any()


calls = []


def counted(model, clean, corrupt, metric, **kw):
    calls.append(1)
    return activation_patching(model, clean, corrupt, metric, **kw)


def test_cache_hit_returns_the_identical_table_without_running(tmp_path, task):
    st = train(tmp_path / "run")
    inputs, params = task
    calls.clear()
    first = over_training(st, build, counted, inputs, params=params, progress=False)
    assert len(calls) == len(STEPS)
    again = over_training(st, build, counted, inputs, params=params, progress=False)
    assert len(calls) == len(STEPS)  # read from the store
    pd.testing.assert_frame_equal(again, first, check_exact=True)
    part = over_training(st, build, counted, inputs, params=params, steps=[3, 6], progress=False)
    assert len(calls) == len(STEPS)
    pd.testing.assert_frame_equal(part, first[first["step"] >= 3].reset_index(drop=True))
    over_training(
        st, build, counted, inputs, params=params, steps=[1], recompute=True, progress=False
    )
    assert len(calls) == len(STEPS) + 1
    # recomputing one step keeps the others cached
    after = over_training(st, build, counted, inputs, params=params, progress=False)
    assert len(calls) == len(STEPS) + 1
    pd.testing.assert_frame_equal(after, first, check_exact=True)


def test_cache_key_changes_with_parameters_and_inputs(tmp_path, task):
    st = train(tmp_path / "run")
    inputs, params = task
    calls.clear()
    over_training(st, build, counted, inputs, params=params, steps=[0], progress=False)
    variants = [
        {**params, "mode": "noising"},
        {**params, "metric": logit_diff(inputs["clean"][:, 2], inputs["corrupt"][:, 1])},
        {**params, "positions": "each"},
    ]
    for i, p in enumerate(variants):
        over_training(st, build, counted, inputs, params=p, steps=[0], progress=False)
        assert len(calls) == 2 + i
    other = {"clean": inputs["clean"].flip(0), "corrupt": inputs["corrupt"].flip(0)}
    over_training(st, build, counted, other, params=params, steps=[0], progress=False)
    assert len(calls) == 5
    over_training(
        st, build, counted, inputs, params=params, steps=[0], name="renamed", progress=False
    )
    assert len(calls) == 6
    over_training(st, build, counted, inputs, params=params, steps=[0], progress=False)
    assert len(calls) == 6  # the first key still hits
    results = sorted(p.name for p in (st.path / st.run / "results").iterdir() if p.is_dir())
    assert len(results) == 6 and all(r.startswith("over_training-") for r in results)


def test_a_given_model_is_restored_and_head_scores_run_by_name(store):
    model = build().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 20, (3, 8), generator=torch.Generator().manual_seed(0))
    from dynalens.circuits.induction import InductionBatch

    batch = InductionBatch(tokens, tokens, torch.tensor([1, 1, 1]), torch.tensor([4, 4, 4]), 3)
    table = over_training(
        store, model, "previous_token_scores", {"batch": batch}, cache=False, progress=False
    )
    assert list(table.columns) == ["step", "layer", "head", "score", "name"]
    assert len(table) == len(STEPS) * 2 * 2
    assert model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_bad_input(tmp_path, store, task):
    inputs, params = task
    plain_model = build()
    plain = dynalens.Recorder(
        plain_model, tmp_path / "none", sites="unembed", capture=("activations",)
    )
    plain_model(inputs["clean"])
    plain.step(0, loss=1.0)
    plain.close()
    with pytest.raises(SiteNotFoundError, match="checkpoints="):
        over_training(tmp_path / "none", build, "activation_patching", inputs, params=params)
    with pytest.raises(StepNotRecordedError, match=r"checkpoints: \[0, 1, 3, 6\]"):
        over_training(store, build, "activation_patching", inputs, params=params, steps=[2])
    wide = ReferenceConfig(n_layers=2, d_model=32, n_heads=2, d_vocab=20, n_ctx=8, d_mlp=None)
    with pytest.raises(InvalidInputError, match=r"does not fit.*size mismatch"):
        over_training(
            store,
            lambda: ReferenceTransformer(wide),
            "activation_patching",
            inputs,
            params=params,
            cache=False,
        )
    with pytest.raises(InvalidParameterError, match="named_metric"):
        over_training(
            store,
            build,
            "activation_patching",
            inputs,
            params={**params, "metric": lambda x: x[:, -1, 0]},
        )
    named = {**params, "metric": named_metric(lambda x: x[:, -1, 0], "first_logit")}
    t = over_training(
        store, build, "activation_patching", inputs, params=named, steps=[0], progress=False
    )
    assert (t["metric"] == "first_logit").all()
    with pytest.raises(InvalidParameterError, match="unknown analysis 'patching'"):
        over_training(store, build, "patching", inputs, params=params)
    with pytest.raises(InvalidParameterError, match="name="):
        over_training(store, build, lambda model, **kw: None, inputs, params=params)
    with pytest.raises(InvalidParameterError, match="analysis name 'a/b'"):
        over_training(store, build, counted, inputs, params=params, name="a/b")
    with pytest.raises(InvalidParameterError, match="both in inputs and in params"):
        over_training(store, build, "activation_patching", inputs, params={**params, "clean": 1})
    with pytest.raises(InvalidParameterError, match="factory"):
        over_training(store, lambda: "not a model", "activation_patching", inputs, params=params)
    with pytest.raises(InvalidParameterError, match="returned a int"):
        over_training(store, build, lambda model: 3, name="three", cache=False, progress=False)


def frame(model, scale):
    w = float(model.unembed.weight.detach().sum())
    return pd.DataFrame({
        "n": [1, 2],
        "maybe": pd.array([1, None], dtype="Int64"),
        "text": ["a", "b"],
        "kind": pd.Categorical(["u", "v"]),
        "flag": [True, False],
        "x": [w * scale, float("nan")],
    })  # fmt: skip


def test_a_dataframe_analysis_of_any_column_types_is_cached_exactly(tmp_path):
    st = train(tmp_path / "run")
    first = over_training(st, build, frame, params={"scale": 2.0}, progress=False)
    again = over_training(st, build, frame, params={"scale": 2.0}, progress=False)
    pd.testing.assert_frame_equal(again, first, check_exact=True)
    assert first["maybe"].isna().tolist() == [False, True] * len(STEPS)
    for step in STEPS:
        w = float(st.checkpoint(step)["unembed.weight"].sum())
        assert first[first["step"] == step]["x"].iloc[0] == w * 2.0
