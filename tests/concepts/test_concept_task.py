"""The engine tells a ConceptTask exactly which concepts each intervention wrote."""

from __future__ import annotations

import torch

from dynalens.estimators.concepts import ConceptTask, intervention_curve


class Recording(ConceptTask):
    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, values: torch.Tensor, written: torch.Tensor | None = None) -> torch.Tensor:
        assert written is not None
        self.calls.append(written.clone())
        return torch.stack([values.sum(1), -values.sum(1)], 1)


def test_written_masks_follow_the_nested_group_masks() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.rand(9, 5, generator=g, dtype=torch.float64)
    c = (torch.rand(9, 5, generator=g) > 0.5).double()
    y = torch.randint(0, 2, (9,), generator=g)
    groups = [[0, 3], [1], [2, 4]]
    task = Recording()
    res = intervention_curve(task, p, c, y, policy="uncertainty", groups=groups)
    masks = res.details["masks"]  # (G + 1, n, G)
    members = torch.zeros(3, 5, dtype=torch.bool)
    for gi, grp in enumerate(groups):
        members[gi, grp] = True
    want = [(m.double() @ members.double()) > 0 for m in masks]
    assert len(task.calls) == len(want)
    for got, exp in zip(task.calls, want):
        assert torch.equal(got, exp)
    assert not task.calls[0].any() and task.calls[-1].all()


def test_plain_callables_still_get_values_only() -> None:
    p = torch.full((4, 2), 0.3, dtype=torch.float64)
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])
    seen = []

    def head(values: torch.Tensor) -> torch.Tensor:
        seen.append(values.shape)
        return torch.stack([values[:, 0], values[:, 1]], 1)

    intervention_curve(head, p, c, y, policy="uncertainty")
    assert seen and all(s == (4, 2) for s in seen)
