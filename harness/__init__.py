"""A test harness for backdoors in self-supervised image encoders (see README.md and DESIGN.md)."""
