"""The Hugging Face backend of interventions: GPT-2 and Llama-style causal LMs.

Transformer-lens names resolve to module paths and splits (see
:mod:`dynalens.probe.interventions_sites` for the access kinds):

=====================  =====================================  ===============================
name                   GPT-2 (``transformer.h.{l}``)          Llama (``model.layers.{l}``)
=====================  =====================================  ===============================
``hook_resid_pre``     input of the block                     input of the decoder layer
``hook_resid_mid``     ``resid_pre + attn_out``, via attn     same
``hook_resid_post``    output of the block                    output of the decoder layer
``hook_attn_out``      output of ``attn``                     output of ``self_attn``
``hook_mlp_out``       output of ``mlp``                      output of ``mlp``
``attn.hook_z``        input of ``attn.c_proj``, by head      input of ``self_attn.o_proj``
``attn.hook_q/k/v``    thirds of ``attn.c_attn``, by head     ``q/k/v_proj`` outputs (GQA)
=====================  =====================================  ===============================

Llama's q and k are taken before the rotary embedding, as transformer-lens's bridges do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynalens.probe.interventions_sites import (
    HEAD_VECTOR,
    Backend,
    Edit,
    EditingHooks,
    InputAccess,
    OutputAccess,
    ResidMidAccess,
    SiteAccess,
    SliceOutputAccess,
)


class HuggingFaceBackend(Backend):
    """Hugging Face causal LMs: GPT-2 (``transformer.h``) and Llama-style decoders
    (``model.layers``, grouped-query attention), reached by module paths plus
    transformer-lens-named virtual sites."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        config: Any = model.config
        self.gpt2 = hasattr(model, "transformer") and hasattr(model.transformer, "h")
        self.kind = "hf-gpt2" if self.gpt2 else "hf-llama"
        self.n_layers = int(config.num_hidden_layers)
        self.n_heads = int(config.num_attention_heads)
        kv = getattr(config, "num_key_value_heads", None)
        self.n_kv_heads = int(kv) if kv and int(kv) != self.n_heads else None
        self._virtual = self._build_virtual()

    def _blocks(self) -> list[tuple[str, nn.Module]]:
        root = "transformer.h" if self.gpt2 else "model.layers"
        return [
            (f"{root}.{i}", self._modules[f"{root}.{i}"]) for i in range(int(self.n_layers or 0))
        ]

    def _build_virtual(self) -> dict[str, SiteAccess]:
        found: dict[str, SiteAccess] = {}
        heads = int(self.n_heads or 0)
        kv = int(self.n_kv_heads or heads)
        for layer, (path, block) in enumerate(self._blocks()):
            attn_path = f"{path}.attn" if self.gpt2 else f"{path}.self_attn"
            attn = self._modules[attn_path]
            tl = f"blocks.{layer}"
            found[f"{tl}.hook_resid_pre"] = InputAccess(f"{tl}.hook_resid_pre", block)
            found[f"{tl}.hook_resid_post"] = OutputAccess(f"{tl}.hook_resid_post", block)
            found[f"{tl}.hook_attn_out"] = OutputAccess(f"{tl}.hook_attn_out", attn)
            found[f"{tl}.hook_resid_mid"] = ResidMidAccess(
                f"{tl}.hook_resid_mid", found[f"{tl}.hook_resid_pre"], found[f"{tl}.hook_attn_out"]
            )
            found[f"{tl}.hook_mlp_out"] = OutputAccess(
                f"{tl}.hook_mlp_out", self._modules[f"{path}.mlp"]
            )
            o_proj = self._modules[f"{attn_path}.c_proj" if self.gpt2 else f"{attn_path}.o_proj"]
            found[f"{tl}.attn.hook_z"] = InputAccess(f"{tl}.attn.hook_z", o_proj, heads)
            if self.gpt2:
                c_attn: Any = self._modules[f"{attn_path}.c_attn"]
                d = int(c_attn.weight.shape[1]) // 3  # GPT-2 Conv1D weight: [d, 3d]
                for i, part in enumerate("qkv"):
                    name = f"{tl}.attn.hook_{part}"
                    found[name] = SliceOutputAccess(name, c_attn, i * d, (i + 1) * d, heads)
            else:
                for part, n in (("q", heads), ("k", kv), ("v", kv)):
                    name = f"{tl}.attn.hook_{part}"
                    found[name] = _HeadOutputAccess(
                        name, self._modules[f"{attn_path}.{part}_proj"], n
                    )
        return found

    def virtual_sites(self) -> dict[str, SiteAccess]:
        return self._virtual

    def blocks(self) -> list[nn.Module] | None:
        return [block for _, block in self._blocks()]

    def forward_kwargs(self) -> dict[str, Any]:
        """No key/value cache: a patched run is one forward, and blocks replayed by prefix
        reuse would leave gaps in a cache."""
        return {"use_cache": False}

    def cache_forward_kwargs(self) -> dict[str, Any] | None:
        return {"use_cache": True}

    def keys_values(self, output: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        layers = getattr(getattr(output, "past_key_values", None), "layers", None)
        if not layers or not all(hasattr(la, "keys") for la in layers):
            return None
        return [(la.keys, la.values) for la in layers]

    def continue_kwargs(
        self, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor, upto: int
    ) -> dict[str, Any]:
        """A ``DynamicCache`` of the first ``upto`` positions of ``rows``: causal attention
        at later positions reads these keys and values, and positions come from the cache
        length (GPT-2 position embeddings, Llama rotary), as in generation."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(kv):
            cache.update(k[rows, :, :upto], v[rows, :, :upto], i)
        return {"past_key_values": cache, "use_cache": True}

    def _instead(self, component: str) -> str:
        if component == "pattern":
            return (
                ": Hugging Face attention returns no pattern tensor from a module. Wrap the "
                "model with transformer_lens.model_bridge.sources.build_bridge_from_module "
                "and sweep the bridge, or patch 'head_out' / 'q' / 'k' / 'v' here."
            )
        return super()._instead(component)


@dataclass
class _HeadOutputAccess:
    """The output of a per-head projection (Llama ``q_proj``), split into heads. The
    values are pre-rotary, as transformer-lens's ``hook_q`` / ``hook_k`` on bridges."""

    name: str
    module: nn.Module
    n_heads: int

    def axes(self, ndim: int) -> tuple[str, ...]:
        return HEAD_VECTOR

    def attach(self, hooks: EditingHooks, edit: Edit) -> None:
        def hook(mod: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            act = output.unflatten(-1, (self.n_heads, -1))
            new = edit(act)
            return None if new is act else new.flatten(-2)

        hooks.on_forward_replace(self.module, hook)
