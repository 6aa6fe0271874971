"""The package version, importable from every layer (the folders it writes record it)."""

__version__ = "0.1.0"
