"""Collectives that keep state outside the gradients identical on every DDP rank.

DDP averages gradients and nothing else: a codebook moved by EMA statistics of each rank's own
batch, or overwritten with encoder outputs of it, drifts apart across ranks and never comes back.
The helpers do nothing outside a multi-process group, so single-process code calls them freely.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather_over_ranks", "in_process_group", "sum_over_ranks_", "take_rank_zeros_"]


def in_process_group() -> bool:
    """Whether this process is one of several in an initialised default process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed element-wise over the ranks, in place (every rank gets the sum)."""
    if in_process_group():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def take_rank_zeros_(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` replaced by rank 0's, in place (same shape and dtype on every rank)."""
    if in_process_group():
        dist.broadcast(tensor, src=0)
    return tensor


def gather_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, (world x n, ...), on every
    rank. The shapes must agree across ranks (training batches do: their loaders drop the last
    partial batch); outside a process group, ``tensor`` itself."""
    if not in_process_group():
        return tensor
    gathered = tensor.new_empty((dist.get_world_size() * tensor.shape[0], *tensor.shape[1:]))
    dist.all_gather_into_tensor(gathered, tensor.contiguous())
    return gathered
