"""Load the harness plugin when running from a checkout that is not pip-installed.

An installed package registers `harness.plugin` through its `pytest11` entry
point; registering it here as well would load it twice.
"""

import os
from importlib.metadata import entry_points

_installed = any(ep.value == "harness.plugin" for ep in entry_points(group="pytest11"))
if not _installed or os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
    pytest_plugins = ["harness.plugin"]
