"""Attacks, one module each; importing the package registers them all in `harness.registry.ATTACKS`."""

from attacks import adaptive, adaptive_mi, badencoder, badnets, bassl, ctrl, drupe  # noqa: F401
