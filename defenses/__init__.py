"""Defenses, one module each; importing the package registers them all in `harness.registry.DEFENSES`."""

from defenses import anp, decree, dede, fp, ft, medic, mimic, moth, nad, ssl_cleanse  # noqa: F401
