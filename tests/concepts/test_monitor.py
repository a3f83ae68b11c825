"""Concept metrics over training: logged values equal the metric on the checkpoint of
the same step, computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dynalens
from dynalens.concepts import make_tabular_concepts
from dynalens.concepts.models import ConceptBottleneckModel, fit_cbm
from dynalens.concepts.monitor import ConceptMonitor, concept_metrics_from_checkpoints
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import concept_accuracy, concept_task_leakage, task_accuracy


def _model() -> ConceptBottleneckModel:
    torch.manual_seed(0)
    return ConceptBottleneckModel(
        nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 12)), nn.Linear(12, 4)
    )


def test_logged_values_equal_the_metric_on_the_saved_model_at_that_step(tmp_path) -> None:
    train = make_tabular_concepts(400, seed=0, input_noise=1.0)
    probe = make_tabular_concepts(1500, seed=1, input_noise=1.0)
    model = _model()
    schedule = [0, 3, 7, 20]
    rec = dynalens.Recorder(model, tmp_path / "s", sites="encoder.0", every=schedule,
                            capture=("activations",), checkpoints=schedule)  # fmt: skip
    metrics = ["concept_accuracy", "task_accuracy", "leakage"]
    mon = ConceptMonitor(model, (probe.x, probe.c, probe.y), metrics, every=schedule,
                         recorder=rec).attach()  # fmt: skip
    fit_cbm(model, train.x, train.c, train.y, mode="joint", epochs=20, batch_size=200,
            callback=lambda s: (rec.step(s), mon.step(s)))  # fmt: skip
    rec.close()
    store = dynalens.open_store(tmp_path / "s")
    table = store.scalars().set_index("step")
    assert sorted(mon.history_) == schedule  # 40 steps: 20 epochs x 2 batches
    assert store.checkpoint_steps().tolist() == [0, 3, 7, 20]
    fresh = _model()
    for step in schedule:
        store.load_checkpoint(step, fresh)
        fresh.eval()
        with torch.no_grad():
            logits, task = fresh(probe.x)
        want = {
            "concept_accuracy": concept_accuracy(probe.c, torch.sigmoid(logits), n_boot=0).value,
            "task_accuracy": task_accuracy(probe.y, task, n_boot=0).value,
            "leakage": concept_task_leakage(
                fresh.concepts(probe.x).detach(), probe.c, probe.y, n_seeds=1, n_boot=0
            ).value,
        }
        for name, value in want.items():
            assert table.loc[step, f"concepts.{name}"] == value, (step, name)
            assert mon.history_[step][name] == value
    logged = []

    class Log:
        def log(self, step, **scalars):
            logged.append((step, scalars))

    replay = concept_metrics_from_checkpoints(
        store, fresh, (probe.x, probe.c, probe.y), metrics, recorder=Log()
    )
    assert [s for s, _ in logged] == schedule
    assert logged[1][1]["concepts.leakage"] == mon.history_[3]["leakage"]
    assert replay["step"].tolist() == schedule
    for name in metrics:
        assert replay[f"concepts.{name}"].tolist() == [mon.history_[s][name] for s in schedule]
    # the monitored values change over training (the measurement sees the live model)
    assert mon.history_[20]["concept_accuracy"] > mon.history_[0]["concept_accuracy"]


def test_custom_metric_and_model_mode_restored() -> None:
    probe = make_tabular_concepts(100, seed=1)
    model = _model()
    model.train()
    seen = []

    def mode(m, x, c, y):
        seen.append(m.training)
        return 1.0

    mon = ConceptMonitor(model, (probe.x, probe.c, probe.y), {"mode": mode}, every=2).attach()
    mon.step(0)
    mon.step(1)
    assert seen == [False, False] and model.training
    assert mon.table()["step"].tolist() == [0, 2]


def test_bad_metric_and_probe_are_refused() -> None:
    probe = make_tabular_concepts(50, seed=1)
    with pytest.raises(InvalidParameterError, match="unknown concept metric 'acc'"):
        ConceptMonitor(_model(), (probe.x, probe.c, probe.y), ["acc"]).attach()
    with pytest.raises(InvalidInputError, match="probe"):
        ConceptMonitor(_model(), (probe.x, probe.c), ["ois"]).attach()


def test_bypass_share_of_a_hybrid_over_training() -> None:
    from dynalens.concepts.models import HybridCBM, fit_hybrid
    from dynalens.estimators.concepts import bypass_share

    train = make_tabular_concepts(300, seed=0, input_noise=1.0)
    probe = make_tabular_concepts(300, seed=1, input_noise=1.0)
    torch.manual_seed(0)
    model = HybridCBM(nn.Linear(16, 12), nn.Linear(16, 4), nn.Linear(16, 4))
    mon = ConceptMonitor(model, (probe.x, probe.c, probe.y), ["bypass_share"], every=[10])
    mon.attach()
    fit_hybrid(model, train.x, train.c, train.y, epochs=10, callback=mon.step)
    model.eval()
    with torch.no_grad():
        want = bypass_share(
            model.task, model.concepts(probe.x), model.residual_values(probe.x), probe.y, n_boot=0
        ).value
    assert mon.history_[10]["bypass_share"] == pytest.approx(want, nan_ok=True)
    with pytest.raises(InvalidParameterError, match="hybrid"):
        ConceptMonitor(_model(), (probe.x, probe.c, probe.y), ["bypass_share"]).attach()
