"""A tiny reference transformer whose module paths are transformer-lens hook names.

Plain torch (no transformer-lens needed): ``blocks.{l}.hook_resid_pre``,
``blocks.{l}.attn.hook_z`` ... are :class:`HookSite` modules (identity), so every
intervention and sweep of :mod:`dynalens.circuits` runs on it by module path, with the
shapes transformer-lens uses: ``hook_q/k/v/z`` ``[batch, pos, head, d_head]``,
``hook_pattern`` ``[batch, head, query_pos, key_pos]``, residual sites ``[batch, pos,
d_model]``. Pre-LN GPT-2 architecture (Radford et al. 2019): ``resid_mid = resid_pre +
attn(LN1(resid_pre))``, ``resid_post = resid_mid + mlp(LN2(resid_mid))``, causal softmax
attention ``softmax(q kᵀ / √d_head + mask) v``, per-head output ``z_h W_O^h`` summed over
heads (Vaswani et al. 2017). ``d_mlp=None`` gives an attention-only model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class HookSite(nn.Identity):
    """A named point of the forward pass (identity); interventions hook its output."""


@dataclass(frozen=True)
class ReferenceConfig:
    """Sizes of a :class:`ReferenceTransformer` (field names as transformer-lens's cfg)."""

    n_layers: int = 2
    d_model: int = 32
    n_heads: int = 4
    d_vocab: int = 20
    n_ctx: int = 16
    d_mlp: int | None = 64
    layer_norm: bool = True

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


class Attention(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.randn(h, d, dh) / math.sqrt(d))
        self.W_K = nn.Parameter(torch.randn(h, d, dh) / math.sqrt(d))
        self.W_V = nn.Parameter(torch.randn(h, d, dh) / math.sqrt(d))
        self.W_O = nn.Parameter(torch.randn(h, dh, d) / math.sqrt(h * dh))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.hook_q, self.hook_k, self.hook_v = HookSite(), HookSite(), HookSite()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookSite(), HookSite(), HookSite()
        mask = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.hook_q(torch.einsum("bpd,hde->bphe", x, self.W_Q))
        k = self.hook_k(torch.einsum("bpd,hde->bphe", x, self.W_K))
        v = self.hook_v(torch.einsum("bpd,hde->bphe", x, self.W_V))
        t = x.shape[1]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~self.mask[:t, :t], float("-inf"))  # type: ignore[index]
        pattern = self.hook_pattern(torch.softmax(self.hook_attn_scores(scores), dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return torch.einsum("bqhe,hed->bqd", z, self.W_O) + self.b_O


class MLP(nn.Module):
    def __init__(self, cfg: ReferenceConfig, d_mlp: int) -> None:
        super().__init__()
        self.W_in = nn.Linear(cfg.d_model, d_mlp)
        self.W_out = nn.Linear(d_mlp, cfg.d_model)
        self.hook_pre = HookSite()
        self.hook_post = HookSite()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_out(self.hook_post(nn.functional.gelu(self.hook_pre(self.W_in(x)))))


class Block(nn.Module):
    def __init__(self, cfg: ReferenceConfig) -> None:
        super().__init__()
        norm = nn.LayerNorm if cfg.layer_norm else nn.Identity
        self.hook_resid_pre = HookSite()
        self.ln1 = norm(cfg.d_model)
        self.attn = Attention(cfg)
        self.hook_attn_out = HookSite()
        self.hook_resid_mid = HookSite()
        self.mlp: MLP | None = None
        if cfg.d_mlp is not None:
            self.ln2 = norm(cfg.d_model)
            self.mlp = MLP(cfg, cfg.d_mlp)
            self.hook_mlp_out = HookSite()
        self.hook_resid_post = HookSite()

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        resid = self.hook_resid_mid(resid + self.hook_attn_out(self.attn(self.ln1(resid))))
        if self.mlp is not None:
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


class ReferenceTransformer(nn.Module):
    """A GPT-2-style decoder with transformer-lens hook names as module paths.

    Example
    -------
    >>> model = ReferenceTransformer(ReferenceConfig(n_layers=2, d_mlp=None), seed=0).eval()
    >>> logits = model(torch.randint(0, 20, (4, 8)))  # [4, 8, 20]
    """

    def __init__(self, cfg: ReferenceConfig | None = None, *, seed: int | None = 0) -> None:
        super().__init__()
        self.cfg = cfg or ReferenceConfig()
        if seed is not None:
            torch.manual_seed(seed)
        c = self.cfg
        self.embed = nn.Embedding(c.d_vocab, c.d_model)
        self.pos_embed = nn.Embedding(c.n_ctx, c.d_model)
        self.hook_embed = HookSite()
        self.hook_pos_embed = HookSite()
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.ln_final = nn.LayerNorm(c.d_model) if c.layer_norm else nn.Identity()
        self.unembed = nn.Linear(c.d_model, c.d_vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab]`` of integer ``tokens`` ``[batch, pos]``."""
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(pos))
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(self.ln_final(resid))
