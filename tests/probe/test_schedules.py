import numpy as np
import pytest

from dynalens.errors import InvalidParameterError
from dynalens.probe.schedules import AtSteps, Every, LogSpaced, Predicate, as_schedule


def test_every_with_start():
    s = Every(5, start=2)
    assert [t for t in range(20) if s(t)] == [2, 7, 12, 17]


def test_at_steps_sorted_unique():
    s = AtSteps([9, 3, 3, 0])
    assert s.steps == [0, 3, 9] and s(3) and not s(4)


def test_log_spaced_dense_early_sparse_late():
    s = LogSpaced(num=30, stop=10_000)
    steps = np.array(s.steps)
    assert steps[0] == 0 and steps[-1] == 10_000
    gaps = np.diff(steps)
    assert gaps[0] <= 2 and gaps[-1] > 1000  # dense early, sparse late
    assert np.all(gaps > 0)
    # evenly spaced in log(1 + step), up to rounding of the early steps
    logs = np.log1p(steps[-10:])
    assert np.allclose(np.diff(logs), np.diff(logs).mean(), rtol=0.05)


def test_predicate_and_as_schedule():
    assert isinstance(as_schedule(3), Every)
    assert isinstance(as_schedule([1, 2]), AtSteps)
    p = as_schedule(lambda t: t % 7 == 0)
    assert isinstance(p, Predicate) and p(14) and not p(15)
    assert as_schedule(Every(2)).describe() == {"kind": "every", "n": 2, "start": 0}


@pytest.mark.parametrize("bad", [0, -3, "ten", 2.5, True, []])
def test_bad_schedules_are_refused(bad):
    with pytest.raises(InvalidParameterError):
        as_schedule(bad)
