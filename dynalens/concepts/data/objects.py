"""Pixel masks of simple filled objects, vectorised over a batch (shared by the image
generators).

Each object is centred at (cy, cx) (pixel units, pixel centres at i + 0.5) with radius r:

========  ============================================================
kind      pixels (dy, dx relative to the centre)
========  ============================================================
circle    dy² + dx² <= r²
square    |dy| <= 0.85 r and |dx| <= 0.85 r
triangle  -r <= dy <= r and |dx| <= (dy + r) / 2   (apex up)
cross     (|dx| <= r/3 and |dy| <= r) or (|dy| <= r/3 and |dx| <= r)
diamond   |dy| + |dx| <= r
ring      (r/2)² <= dy² + dx² <= r²
========  ============================================================
"""

from __future__ import annotations

import torch

__all__ = ["OBJECT_KINDS", "object_masks"]

OBJECT_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "ring")


def object_masks(
    kind: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, radius: torch.Tensor, size: int
) -> torch.Tensor:
    """Masks (n, size, size) bool of n objects; ``kind`` (n,) int64 indexes
    :data:`OBJECT_KINDS`, ``cy``, ``cx``, ``radius`` (n,) float.

    Examples
    --------
    >>> m = object_masks(torch.tensor([0]), torch.tensor([6.0]), torch.tensor([6.0]),
    ...                  torch.tensor([3.0]), 12)
    >>> m.shape, bool(m[0, 6, 6])
    (torch.Size([1, 12, 12]), True)
    """
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dy = grid[None, :, None] - cy.float()[:, None, None]
    dx = grid[None, None, :] - cx.float()[:, None, None]
    r = radius.float()[:, None, None]
    d2 = dy**2 + dx**2
    ady, adx = dy.abs(), dx.abs()
    shapes = (
        d2 <= r**2,
        (ady <= 0.85 * r) & (adx <= 0.85 * r),
        (dy >= -r) & (dy <= r) & (adx <= (dy + r) / 2),
        ((adx <= r / 3) & (ady <= r)) | ((ady <= r / 3) & (adx <= r)),
        ady + adx <= r,
        (d2 <= r**2) & (d2 >= (r / 2) ** 2),
    )
    k = kind[:, None, None]
    out = torch.zeros_like(shapes[0])
    for i, mask in enumerate(shapes):
        if bool((kind == i).any()):
            out = torch.where(k == i, mask, out)
    return out
