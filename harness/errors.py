"""One exception root for everything the harness reports to a user.

    HarnessError                 exit 3 unless a subclass says otherwise
     ├── InputError              exit 2: bad scenario, option, file or results folder
     │    └── HostError          exit 2: a host unreachable or not OpenAI-compatible before start
     ├── RunError                exit 3: the run could not complete (records missing, Locust died)
     └── CheckFailed             exit 1: the run finished but a configured check failed

The CLI catches `HarnessError` once and prints `harness: <message>` on one line, no traceback.
Messages name the file, field or host and say what was expected.
"""

from __future__ import annotations

__all__ = ["CheckFailed", "HarnessError", "HostError", "InputError", "RunError"]


class HarnessError(Exception):
    """Root of the harness's own errors; `exit_code` is what the CLI exits with."""

    exit_code = 3


class InputError(HarnessError):
    """Bad input from the user: scenario, option, file, results folder."""

    exit_code = 2


class HostError(InputError):
    """A host could not be used before the run started (unreachable, wrong protocol, unknown model)."""


class RunError(HarnessError):
    """The run could not complete, or completed without every record it should have."""

    exit_code = 3


class CheckFailed(HarnessError):
    """The run finished but a configured check (SLO, error budget, regression) failed."""

    exit_code = 1
