"""Model checkpoints stored by the Recorder: exact, at the right parameters, crash-safe,
checked like every record (issue 12, section 4: checkpoints)."""

import copy

import pytest
import torch
from torch import nn

import dynalens
from dynalens.errors import DamagedStoreError, SiteNotFoundError, StepNotRecordedError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)  # buffers, a 0-d int64 one among them
        self.head = nn.Linear(6, 3).to(torch.bfloat16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.fc(x))).to(torch.bfloat16)).float()


def run(path, steps=5, **kw):
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seen = {}  # the state each step's batch saw
    g = torch.Generator().manual_seed(1)
    rec = dynalens.Recorder(model, path, sites="fc", every=3, **kw)
    for step in range(steps):
        seen[step] = copy.deepcopy(model.state_dict())
        x = torch.randn(8, 4, generator=g)
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (8,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(step, loss=loss.item())
    seen[steps] = copy.deepcopy(model.state_dict())
    rec.close()
    return model, seen


def test_checkpoints_hold_the_parameters_each_step_saw_exactly(tmp_path):
    _, seen = run(tmp_path / "s", checkpoints=2)  # 0, 2, 4 (step 5, after the last, is not due)
    store = dynalens.open_store(tmp_path / "s")
    assert store.checkpoint_steps().tolist() == [0, 2, 4]
    assert store.steps("fc").tolist() == [0, 3]  # activations keep their own schedule
    for step in (0, 2, 4):
        got = store.checkpoint(step)
        assert list(got) == list(seen[step])
        for key, value in seen[step].items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape
            assert torch.equal(got[key], value), (step, key)
    assert store.verify().ok


def test_close_stores_the_final_parameters_when_the_next_step_is_due(tmp_path):
    model, seen = run(tmp_path / "s", steps=4, checkpoints=[0, 4])
    store = dynalens.open_store(tmp_path / "s")
    assert store.checkpoint_steps().tolist() == [0, 4]
    fresh = store.load_checkpoint(4, into=Net())
    for key, value in seen[4].items():  # the parameters after the last update
        assert torch.equal(fresh.state_dict()[key], value)
    x = torch.randn(5, 4)
    model.eval()
    fresh.eval()
    assert torch.equal(model(x), fresh(x))


def test_checkpoint_errors(tmp_path):
    run(tmp_path / "a", steps=2)
    with pytest.raises(SiteNotFoundError, match="checkpoints="):
        dynalens.open_store(tmp_path / "a").checkpoint_steps()
    run(tmp_path / "b", steps=3, checkpoints=2)
    store = dynalens.open_store(tmp_path / "b")
    with pytest.raises(StepNotRecordedError, match="checkpoints: \\[0, 2\\]"):
        store.checkpoint(1)
    f = tmp_path / "b" / "run-000" / "rank0" / "checkpoints" / "fc.weight" / "c.1.0.0"
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(DamagedStoreError, match="step 2"):
        store.checkpoint(2)
    assert store.checkpoint(0)["fc.weight"].shape == (6, 4)
