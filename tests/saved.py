"""What autograd saves for backward, measured by saved-tensor hooks: the independent view
of a method's memory argument that its tests check against closed forms."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn


def saved_bytes(fn: Callable[[], object], model: nn.Module) -> int:
    """Bytes of the distinct activation storages autograd saves while ``fn`` runs; each
    storage counted once, ``model``'s parameters (resident anyway) left out."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def modules_that_save(fn: Callable[[], object], modules: Iterable[tuple[str, nn.Module]]) -> set[str]:
    """The names of ``modules`` in whose own forward (innermost) autograd saved a tensor."""
    inside: list[str] = []
    saving: set[str] = set()
    hooks = []

    def leave(module, args, out) -> None:  # returns None: the output stays as it is
        inside.pop()

    for name, module in modules:
        hooks.append(module.register_forward_pre_hook(lambda m, args, name=name: inside.append(name)))
        hooks.append(module.register_forward_hook(leave))

    def pack(t):
        if inside:
            saving.add(inside[-1])
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        for hook in hooks:
            hook.remove()
    return saving
