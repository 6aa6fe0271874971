"""Evaluation: image features (FID Inception backends), FID/KID, cached reference features."""

from .distribution import DistributionMetrics, cache_key, cached_features, extract_features
from .features import BACKENDS, TorchScriptInception, load_feature_extractor

__all__ = ["BACKENDS", "DistributionMetrics", "TorchScriptInception", "cache_key", "cached_features",
           "extract_features", "load_feature_extractor"]
