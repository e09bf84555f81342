"""The suites are harness suites: begin the harness session as pytest starts, not when the first suite is collected.

So that bad options are usage errors before anything is collected, the header is
at the top, and pytest-xdist's controller knows its workers' tests share suspects.
"""

import pytest

from harness.plugin import session_of


def pytest_configure(config: pytest.Config) -> None:
    session_of(config)
