"""The scalar table: one row per step, sorted, the last value logged for each column."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import dynalens
from dynalens.probe.scalar_table import merge_rows_by_step

from .conftest import train


def reference(steps, values):
    """A plain loop: per step, per column, the last non-NaN value in write order."""
    out = {}
    for s, row in zip(steps, values):
        merged = out.setdefault(s, [np.nan] * len(row))
        for j, v in enumerate(row):
            if not np.isnan(v):
                merged[j] = v
    return {s: out[s] for s in sorted(out)}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 6),
            st.lists(st.one_of(st.just(np.nan), st.floats(-5, 5)), min_size=2, max_size=2),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_merge_equals_the_per_row_loop(rows):
    steps = np.array([s for s, _ in rows], dtype=np.int64)
    values = np.array([v for _, v in rows], dtype=np.float64)
    merged = merge_rows_by_step({"step": steps, "a": values[:, 0], "b": values[:, 1]})
    ref = reference(steps.tolist(), values.tolist())
    assert merged["step"].tolist() == list(ref)
    got = np.stack([merged["a"], merged["b"]], axis=1)
    np.testing.assert_array_equal(got, np.array(list(ref.values())))


def test_scalars_logged_later_for_a_step_join_its_row(tmp_path, mlp, data):
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc1", every=1) as rec:
        train(mlp, rec, x, y, steps=4)
        rec.flush()
        rec.log(1, gns=3.5)  # an instrument reporting step 1 after step 3
        rec.log(0, lr=0.1)
    df = dynalens.open_store(tmp_path / "s").scalars()
    assert df["step"].tolist() == [0, 1, 2, 3]
    assert df.loc[1, "gns"] == 3.5 and np.isfinite(df.loc[1, "loss"])
    assert df.loc[0, "lr"] == 0.1 and np.isnan(df.loc[2, "gns"])
