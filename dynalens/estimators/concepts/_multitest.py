r"""Multiple-comparison adjusted p-values (m tests, sorted p_(1) <= ... <= p_(m)).

- Bonferroni: :math:`\min(1, m\,p_i)` (family-wise error rate).
- Holm (1979): step-down, :math:`\tilde p_{(i)} = \max_{j \le i} \min(1, (m - j + 1) p_{(j)})`
  (family-wise error rate, uniformly more powerful than Bonferroni).
- Benjamini–Hochberg (1995): step-up, :math:`\tilde p_{(i)} = \min_{j \ge i} \min(1, m
  p_{(j)} / j)` (false discovery rate; equal to ``scipy.stats.false_discovery_control``).

NaN p-values (tests that could not run) stay NaN and do not count in m.
"""

from __future__ import annotations

import torch

__all__ = ["CORRECTIONS", "adjust_pvalues"]

CORRECTIONS = ("bh", "holm", "bonferroni", "none")


def adjust_pvalues(p: torch.Tensor, method: str) -> torch.Tensor:
    """Adjusted p-values, same shape as ``p`` (float64)."""
    p = p.to(torch.float64)
    out = torch.full_like(p, float("nan"))
    valid = ~torch.isnan(p)
    v = p[valid]
    m = v.numel()
    if m == 0 or method == "none":
        out[valid] = v
        return out
    if method == "bonferroni":
        adj = (v * m).clamp(max=1.0)
    else:
        order = v.argsort()
        ps = v[order]
        rank = torch.arange(1, m + 1, dtype=torch.float64)
        if method == "holm":
            steps = ((m - rank + 1) * ps).clamp(max=1.0).cummax(0).values
        else:  # bh
            steps = (m * ps / rank).flip(0).cummin(0).values.flip(0).clamp(max=1.0)
        adj = torch.empty_like(v)
        adj[order] = steps
    out[valid] = adj
    return out
