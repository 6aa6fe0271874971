"""The discrete noise process: schedules, posterior, loss and samplers. Pure torch."""

from .guidance import classifier_free_guidance, truncate
from .loss import DiffusionLoss, LossConfig
from .process import q_posterior, q_sample
from .samplers import SAMPLERS, AncestralSampler, EditSpec, PuritySampler, Sampler, make_sampler, sample_prior
from .schedule import SCHEDULE_PRESETS, NoiseSchedule, ScheduleConfig

__all__ = [
    "AncestralSampler",
    "DiffusionLoss",
    "EditSpec",
    "LossConfig",
    "NoiseSchedule",
    "PuritySampler",
    "SAMPLERS",
    "SCHEDULE_PRESETS",
    "Sampler",
    "ScheduleConfig",
    "classifier_free_guidance",
    "make_sampler",
    "q_posterior",
    "q_sample",
    "sample_prior",
    "truncate",
]
