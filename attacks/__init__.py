"""Attacks, one module each; importing the package registers them all in `harness.registry.ATTACKS`."""

from attacks import badencoder  # noqa: F401
