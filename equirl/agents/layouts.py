"""Tensors as flat memory, for code that walks parameters elementwise (equirl's Adam, the
gradient all-reduce of torchrun training).

The Nature CNN's weights are channels-last, so their memory order is not their index order. An
elementwise pass over a parameter and tensors laid out like it can run on 1-D views of their
memory (no copies), provided every tensor in the pass has the parameter's layout."""
from __future__ import annotations

import torch


def is_dense(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` fills its memory without gaps, contiguous or channels-last."""
    return tensor.is_contiguous() or (tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last))


def memory_view(tensor: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor's memory, in memory order (channels-last included)."""
    if not is_dense(tensor):
        raise ValueError(f"a flat view needs a contiguous or channels-last tensor, not strides {tensor.stride()}")
    return tensor.detach().as_strided((tensor.numel(),), (1,))


def laid_out_like(param: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` in ``param``'s memory layout: ``values`` itself where it already is, else a copy."""
    if values.stride() == param.stride():
        return values
    return torch.empty_like(param, dtype=values.dtype).copy_(values)
