"""Fused GPU kernels where profiling showed the need (Triton; CPU installs fall back to torch)."""
