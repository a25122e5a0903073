"""The frozen-backbone check shared by the method contracts of every backbone family."""

import itertools

import torch


def snapshot(backbone: torch.nn.Module) -> dict[int, tuple[str, torch.Tensor]]:
    """Copies of every parameter and buffer, keyed by tensor identity (a method may
    re-parent the backbone's modules, as PEFT does, but must not replace the tensors)."""
    return {id(t): (n, t.detach().clone()) for n, t in itertools.chain(backbone.named_parameters(), backbone.named_buffers())}


def assert_unchanged_except(backbone: torch.nn.Module, before: dict, exempt: set[int]) -> None:
    """Every tensor of ``before`` whose id is not in ``exempt`` is still there, bit-identical."""
    tensors = {id(t): t for t in itertools.chain(backbone.parameters(), backbone.buffers())}
    assert set(before) <= set(tensors), "a backbone tensor was replaced"
    for key, (name, old) in before.items():
        if key not in exempt:
            assert torch.equal(tensors[key], old), name
