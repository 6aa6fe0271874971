"""Samplers: turn a denoiser ``log_p_x0(x_t, t) -> (B, K, N)`` into token grids (SPEC §6).

A sampler never sees the network, the condition or guidance: the pipeline hands it a closure that
already applies classifier-free guidance. The sampler applies truncation, clamps, and walks the
chain. All loops index the schedule with Python integers, so no step synchronises with the host.
One algorithm per module; :data:`SAMPLERS` names them.
"""

from __future__ import annotations

import inspect

from .ancestral import AncestralSampler
from .base import EditSpec, Sampler, StepCallback, sample_prior
from .diffusers import DiffusersSampler
from .first_hitting import FirstHittingSampler
from .maskgit import MaskGITSampler
from .purity import PuritySampler
from .remdm import ReMDMSampler

__all__ = [
    "SAMPLERS",
    "AncestralSampler",
    "DiffusersSampler",
    "EditSpec",
    "FirstHittingSampler",
    "MaskGITSampler",
    "PuritySampler",
    "ReMDMSampler",
    "Sampler",
    "StepCallback",
    "make_sampler",
    "sample_prior",
]

SAMPLERS: dict[str, type[Sampler]] = {
    sampler.name: sampler
    for sampler in (AncestralSampler, PuritySampler, DiffusersSampler, MaskGITSampler, FirstHittingSampler,
                    ReMDMSampler)
}


def make_sampler(name: str | Sampler, **kwargs) -> Sampler:
    """A sampler from a name in :data:`SAMPLERS`, or an instance as is."""
    if isinstance(name, Sampler):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)} or a Sampler")
    cls = SAMPLERS[name]
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"sampler {name!r} has no option {unknown}; its options are {sorted(accepted) or 'none'}")
    return cls(**kwargs)
