"""Test-only fault points: pauses that let the fault suite kill a worker at an exact moment.

Inert unless ``SURVEYMESH_TEST_PAUSE_AFTER_COMMIT`` is set, which no deployment sets. Its
value is ``<component_type>:<seconds>``: after the activity that stores that component has
committed it (with its events), the activity sleeps before returning, so a test can see
the row, SIGKILL the process and prove that the retry on another worker neither loses nor
duplicates anything ("committed but completion never reported" is the hardest crash
window of an at-least-once system).
"""

from __future__ import annotations

import asyncio
import logging
import os

log = logging.getLogger(__name__)

PAUSE_AFTER_COMMIT_ENV = "SURVEYMESH_TEST_PAUSE_AFTER_COMMIT"


async def after_commit(component_type: str) -> None:
    """Pauses if the test environment asks for a pause after ``component_type`` commits."""
    spec = os.environ.get(PAUSE_AFTER_COMMIT_ENV)
    if not spec:
        return
    name, _, seconds = spec.partition(":")
    if name != component_type:
        return
    log.warning("fault point: pausing %ss after committing %s", seconds or "3600", name)
    await asyncio.sleep(float(seconds or 3600))
