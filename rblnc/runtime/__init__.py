"""Runtimes: load a .rbln artifact and run requests through its partitions."""

from .runtime import Runtime

__all__ = ["Runtime"]
