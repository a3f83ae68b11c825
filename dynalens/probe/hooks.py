"""Scoped, owned hooks: the one capture mechanism of dynalens.

A :class:`HookSet` registers forward hooks (and, from inside them, tensor hooks on the
module's output for the gradient of the loss with respect to it) and removes exactly
what it added, also when an exception is raised. Everything that captures tensors
(the :class:`~dynalens.Recorder`, the per-example gradient statistics) builds on it, so
a loop that records and measures pays for one set of hooks.

Why tensor hooks instead of ``register_full_backward_hook``: the latter wraps outputs in
a ``BackwardHookFunction`` view and raises "Output 0 of BackwardHookFunction is a view
and is being modified inplace" when an in-place op (``ReLU(inplace=True)``) follows the
module (pytorch#61519; reproduced on torch 2.13). ``out.register_hook`` from the forward
hook sees the same gradient and tolerates in-place ops that follow.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

ForwardFn = Callable[[nn.Module, tuple[Any, ...], Any], None]
GradFn = Callable[[nn.Module, torch.Tensor], None]


def first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a site stands for: the value itself, or the first tensor inside a
    tuple / list / dict / ModelOutput (e.g. an LSTM's ``(out, (h, c))``)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


class HookSet:
    """Hooks added to modules, removed together.

    Use as a context manager, or call :meth:`remove`. ``remove`` is idempotent.

    Example:
        >>> hooks = HookSet()
        >>> seen = []
        >>> with hooks:
        ...     hooks.on_forward(layer, lambda m, args, out: seen.append(out.shape))
        ...     model(x)
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def on_forward(
        self, module: nn.Module, fn: ForwardFn, *, with_kwargs: bool = False
    ) -> RemovableHandle:
        """Call ``fn(module, args, output)`` after every forward of ``module``
        (``fn(module, args, output, kwargs)`` with ``with_kwargs=True``).

        ``fn`` must not return a value: a forward hook that returns replaces the output,
        and dynalens never changes what a model computes. Returns the handle, to remove
        this hook alone before the set (removing twice is harmless).
        """
        if with_kwargs:

            def hook_kw(
                mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
            ) -> None:
                fn(mod, args, output, kwargs)  # type: ignore[call-arg]

            handle = module.register_forward_hook(hook_kw, with_kwargs=True)
            self._handles.append(handle)
            return handle

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            fn(mod, args, output)

        handle = module.register_forward_hook(hook)
        self._handles.append(handle)
        return handle

    def on_forward_pre(
        self, module: nn.Module, fn: Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], None]
    ) -> RemovableHandle:
        """Call ``fn(module, args, kwargs)`` before every forward of ``module`` (it must not
        return a value: the inputs stay as they are). Returns the handle."""

        def pre(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            fn(mod, args, kwargs)

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
        self._handles.append(handle)
        return handle

    def on_forward_view(
        self, module: nn.Module, fn: Callable[[nn.Module, tuple[Any, ...], Any], Any]
    ) -> RemovableHandle:
        """Let ``fn(module, args, output)`` hand the consumers of ``module`` a *view* of its
        output with the same values (or None: the output unchanged).

        The one sanctioned exception to "hooks never change what a model computes": the
        per-example engine returns a broadcast ``(1, T, d)`` output as the expanded
        ``(B, T, d)`` view that its consumer's broadcasting computes anyway, so that the
        gradient arrives per example. ``fn`` must return ``output`` itself, an expanded
        view of it, or None. Hooks registered after this one see the view.
        """

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            return fn(mod, args, output)

        handle = module.register_forward_hook(hook)
        self._handles.append(handle)
        return handle

    def on_output_grad(
        self,
        module: nn.Module,
        fn: GradFn,
        *,
        when: Callable[[], bool] | None = None,
    ) -> None:
        """Call ``fn(module, grad)`` with d(loss)/d(output) of ``module`` in backward.

        The tensor hook is registered from a forward hook on the output tensor (the first
        tensor of a tuple output) whenever that output requires grad and ``when()`` (if
        given) is true; the hook returns ``None``, so gradients flow unchanged.
        """

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            out = first_tensor(output)
            if out is None or not out.requires_grad:
                return
            if when is not None and not when():
                return

            def grad_hook(grad: torch.Tensor) -> None:
                fn(mod, grad)

            out.register_hook(grad_hook)

        self._handles.append(module.register_forward_hook(hook))

    def adopt(self, handle: RemovableHandle) -> RemovableHandle:
        """Own a hook registered elsewhere (e.g. one whose return value edits the output):
        it is removed with the set. Returns ``handle``."""
        self._handles.append(handle)
        return handle

    def discard(self, handle: RemovableHandle) -> None:
        """Remove one hook this set added (by the handle :meth:`on_forward` returned)."""
        handle.remove()
        if handle in self._handles:
            self._handles.remove(handle)

    def remove(self) -> None:
        """Remove every hook this set added (safe to call twice)."""
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
