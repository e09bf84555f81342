"""A test harness for backdoors in self-supervised image encoders (see README.md).

The Python API, each one call (harness/api.py):

    import harness

    frame = harness.run(attack="badencoder", downstream="fmnist")   # a slice of the grid as a DataFrame
    found = harness.scan("suspect.safetensors", "clean-images/")    # DECREE's verdict (detector="ssl_cleanse": SSL-Cleanse's)
    purified = harness.purify("suspect.safetensors", "clean-images/", defense="mimic")
    metrics = harness.evaluate_encoder(purified.encoder, "fmnist")
    with harness.progress_to():                                      # progress lines on stderr
        ...

The names are looked up on first use: `import harness` imports neither torch nor
pandas, which matters because pytest imports this package for its plugin in every
run of the environment.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "run": "harness.api",
    "scan": "harness.api",
    "purify": "harness.api",
    "evaluate_encoder": "harness.api",
    "progress_to": "harness.training",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
