"""rblnc on Ray Data: `Predictor` runs a compiled model on a Dataset's batches, one AsyncRuntime per actor.

    import ray, rblnc.ray
    ds = ray.data.read_images("images/")
    out = ds.map_batches(rblnc.ray.Predictor, fn_constructor_kwargs={"path": "model.rbln"},
                         compute=ray.data.ActorPoolStrategy(size=2), batch_size=64)

Needs the `ray` extra (`pip install 'rblnc[ray]'`). Inside this package `import ray` is Ray
itself: imports are absolute, so `rblnc.ray` never shadows it.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401  (Ray itself, not this package)
except ImportError as exc:  # pragma: no cover - the extra is installed by `make install`
    raise ImportError("rblnc.ray needs Ray Data: pip install 'rblnc[ray]'") from exc

import importlib
from typing import Any

# Loaded on first use: Ray tasks that only read shards (rblnc.ray.shards) need not import torch.
_LAZY = {"Predictor": "rblnc.ray.predictor", "put_artifact": "rblnc.ray.predictor"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rblnc.ray' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
