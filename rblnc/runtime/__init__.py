"""Runtimes: load a .rbln artifact and run requests through its partitions."""

from .async_runtime import AsyncRuntime, AsyncTask
from .runtime import Runtime

__all__ = ["AsyncRuntime", "AsyncTask", "Runtime"]
