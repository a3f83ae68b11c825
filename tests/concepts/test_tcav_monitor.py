"""TCAV over training: the ConceptMonitor logs a TCAV score at the scheduled steps, equal
to TCAV computed by hand (CAV + directional derivatives) on the checkpoint of that step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dynalens
from dynalens.concepts import make_tabular_concepts
from dynalens.concepts.models import ConceptBottleneckModel, fit_cbm
from dynalens.concepts.monitor import ConceptMonitor, concept_metrics_from_checkpoints
from dynalens.concepts.tcav_monitor import tcav_metric
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._layers import layer_activations
from dynalens.estimators.concepts.cav import train_cav
from dynalens.estimators.concepts.tcav import directional_derivatives, tcav_scores


def _model() -> ConceptBottleneckModel:
    torch.manual_seed(0)
    return ConceptBottleneckModel(
        nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 12)), nn.Linear(12, 4)
    )


class _Task(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)[1]


def _by_hand(model: nn.Module, x, c, y, concept: int, target: int, sign: str) -> float:
    task = _Task(model).eval()
    present = c[:, concept] > 0.5
    pos = layer_activations(task, x[present], "m.encoder.1")
    neg = layer_activations(task, x[~present], "m.encoder.1")
    cav = train_cav(pos, neg, layer="m.encoder.1", seed=0)
    s = directional_derivatives(task, x[y == target], "m.encoder.1", [cav], target, sign=sign)
    return float(tcav_scores(s, sign)[0])


@pytest.mark.filterwarnings("error::UserWarning")  # no monitor pass taken for a batch
def test_monitor_logs_tcav_equal_to_tcav_on_the_checkpoint(tmp_path) -> None:
    train = make_tabular_concepts(400, seed=0, input_noise=1.0)
    probe = make_tabular_concepts(600, seed=1, input_noise=1.0)
    model = _model()
    schedule = [0, 5, 20]
    metrics = {
        "tcav_c0_y1": tcav_metric("encoder.1", 0, 1),
        "tcav_loss_c3_y0": tcav_metric("encoder.1", 3, 0, sign="loss_neg"),
    }
    rec = dynalens.Recorder(model, tmp_path / "s", sites="encoder.0", every=schedule,
                            capture=("activations",), checkpoints=schedule)  # fmt: skip
    mon = ConceptMonitor(model, (probe.x, probe.c, probe.y), metrics, every=schedule,
                         recorder=rec).attach()  # fmt: skip
    fit_cbm(model, train.x, train.c, train.y, mode="joint", epochs=10, batch_size=200,
            callback=lambda s: (rec.step(s), mon.step(s)))  # fmt: skip
    rec.close()
    store = dynalens.open_store(tmp_path / "s")
    table = store.scalars().set_index("step")
    assert sorted(mon.history_) == schedule
    fresh = _model()
    values = []
    for step in schedule:
        store.load_checkpoint(step, fresh)
        want = {
            "tcav_c0_y1": _by_hand(fresh, probe.x, probe.c, probe.y, 0, 1, "logit_pos"),
            "tcav_loss_c3_y0": _by_hand(fresh, probe.x, probe.c, probe.y, 3, 0, "loss_neg"),
        }
        for name, value in want.items():
            assert table.loc[step, f"concepts.{name}"] == value, (step, name)
            assert mon.history_[step][name] == value
        values.append(want["tcav_c0_y1"])
    assert len(set(values)) > 1  # the score moves over training
    after = concept_metrics_from_checkpoints(store, _model(), (probe.x, probe.c, probe.y),
                                             metrics).set_index("step")  # fmt: skip
    for step in schedule:
        assert after.loc[step, "concepts.tcav_c0_y1"] == mon.history_[step]["tcav_c0_y1"]


def test_tcav_metric_refuses_a_missing_class_or_concept() -> None:
    probe = make_tabular_concepts(100, seed=1)
    model = _model().eval()
    with pytest.raises(InvalidInputError, match="no probe row has class 9"):
        tcav_metric("encoder.1", 0, 9)(model, probe.x, probe.c, probe.y)
    with pytest.raises(InvalidInputError, match="concept index 40"):
        tcav_metric("encoder.1", 40, 0)(model, probe.x, probe.c, probe.y)
