import pytest
import torch
from torch import nn


class MLP(nn.Module):
    """A small MLP with an in-place ReLU after each Linear (the case that breaks
    register_full_backward_hook)."""

    def __init__(self, d_in: int = 6, hidden: int = 8, d_out: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU(inplace=True)
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@pytest.fixture
def mlp() -> MLP:
    return MLP()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)


def hook_count(model: nn.Module) -> int:
    """Hooks of every kind registered on the model's modules."""
    total = 0
    for m in model.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(m._backward_pre_hooks)
    return total


def train(model, rec, x, y, steps, batch=8, lr=0.1, start=0):
    """A plain loop over global steps ``start .. start + steps - 1``."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(start, start + steps):
        idx = torch.arange(step * batch, (step + 1) * batch) % len(x)
        out = model(x[idx])
        loss = nn.functional.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(step, loss=loss.item(), sample_ids=idx)
