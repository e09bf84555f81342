"""Defenses, one module each; importing the package registers them all in `harness.registry.DEFENSES`."""

from defenses import anp, fp, ft, mimic, nad  # noqa: F401
