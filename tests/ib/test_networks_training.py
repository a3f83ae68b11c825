import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dynalens
from dynalens.errors import InvalidParameterError
from dynalens.ib.networks import NoisyTanh, hidden_sites, tishby_network
from dynalens.ib.reproduce import REPRODUCTIONS, reproduce, summarize
from dynalens.ib.training import IBConfig, train_ib_network


def test_network_shapes_and_names():
    net = tishby_network("relu")
    assert hidden_sites(net) == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [10, 7, 5, 4, 3, 2]
    assert net(torch.zeros(3, 12)).shape == (3, 2)
    assert torch.equal(tishby_network(seed=1)[0].weight, tishby_network(seed=1)[0].weight)
    with pytest.raises(InvalidParameterError, match="activation must be one of"):
        tishby_network("gelu")


def test_noisy_tanh_adds_noise_only_in_training():
    unit = NoisyTanh(0.5)
    x = torch.zeros(20000)
    assert abs(float(unit(x).std()) - 0.5) < 0.02
    unit.eval()
    assert torch.equal(unit(x), torch.zeros(20000))


def test_training_records_log_spaced_epochs_on_all_inputs(tmp_path):
    x = np.random.default_rng(0).integers(0, 2, (64, 12))
    y = (x.sum(1) > 6).astype(int)
    cfg = IBConfig(activation="tanh", epochs=20, records=5, batch_size=16)
    store = train_ib_network(x, y, cfg, tmp_path / "s", run="t", progress=False)
    spe = store.meta["config"]["steps_per_epoch"]
    epochs = store.meta["config"]["recorded_epochs"]
    assert epochs[0] == 0 and epochs[-1] == 20
    assert store.steps("tanh1").tolist() == [e * spe for e in epochs]
    assert store.activations("tanh3", 0).shape == (64, 5)
    px, _py = store.probe()
    np.testing.assert_array_equal(px, x.astype(np.float32))
    df = store.scalars()
    assert {"loss", "train_accuracy", "test_accuracy", "epoch"} <= set(df.columns)
    with pytest.raises(InvalidParameterError, match="records must be >= 2"):
        train_ib_network(x, y, IBConfig(records=1), tmp_path / "t", progress=False)


@pytest.mark.slow
def test_quick_reproduction_writes_figures_and_results(tmp_path):
    res = reproduce("saxe", tmp_path / "saxe", quick=True, epochs=8, progress=False)
    files = {p.split("/")[-1] for p in res["files"]}
    assert {"plane_relu_binning.html", "plane_relu_kde.html", "results.json"} <= files
    saved = json.loads((tmp_path / "saxe" / "results.json").read_text())
    kde = saved["runs"]["relu"]["planes"]["kde"]
    assert len(kde["summary"]) == 5
    rows = kde["table"]
    assert all(r["I_XT_lower"] <= r["I_XT"] + 1e-9 <= r["I_XT_upper"] + 2e-9 for r in rows)
    assert saved["task"] == "built-in 12-bit task"


SHARED_VAR_U = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "var_u.mat"


@pytest.mark.skipif(not SHARED_VAR_U.exists(), reason="../shared/data/var_u.mat not present")
def test_the_papers_labels_load_from_shared_data():
    """var_u.mat (IDNNs): every 12-bit pattern once in lexicographic order; 2118 ones."""
    pytest.importorskip("scipy")
    from dynalens.datasets.twelve_bit import all_patterns
    from dynalens.ib.reproduce import load_task

    x, y = load_task(SHARED_VAR_U)
    np.testing.assert_array_equal(x, all_patterns(12))
    assert int(y.sum()) == 2118 and len(y) == 4096


def test_builtin_task_is_balanced_and_symmetric():
    from dynalens.datasets.twelve_bit import icosahedron_vertices, twelve_bit_task

    _x, y = twelve_bit_task()
    assert abs(y.mean() - 0.5) < 0.01
    np.testing.assert_array_equal(y, y[::-1])  # invariant under flipping every bit (s -> -s)
    u = icosahedron_vertices()
    assert np.allclose(np.linalg.norm(u, axis=1), 1) and np.allclose(u.sum(0), 0)


def test_unknown_reproduction():
    with pytest.raises(InvalidParameterError, match="did you mean 'tishby'"):
        reproduce("tishbi")
    assert set(REPRODUCTIONS) == {"tishby", "saxe", "chelombiev", "goldfeld"}


def test_summary_measures_compression():
    import pandas as pd

    t = pd.DataFrame(
        {
            "layer": [1, 1, 1],
            "site": ["a"] * 3,
            "step": [0, 1, 2],
            "I_XT": [1.0, 3.0, 2.5],
            "I_TY": [0.1, 0.5, 0.6],
        }
    )
    (s,) = summarize(t)
    assert s["I_XT_peak"] == 3.0 and s["compression"] == pytest.approx(0.5)
    assert s["I_TY_final"] == 0.6


def test_cli_reproduce_parser():
    from dynalens.cli import build_parser

    args = build_parser().parse_args(["reproduce", "goldfeld", "--quick", "--epochs", "3"])
    assert args.name == "goldfeld" and args.quick and args.epochs == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reproduce", "nobody"])
    assert dynalens.__version__
