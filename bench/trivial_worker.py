"""The raw Temporal baseline: a worker process with a trivial one-activity workflow.

``python -m bench.trivial_worker ADDRESS TASK_QUEUE`` polls ``TASK_QUEUE`` until stdin
closes. :data:`WORKFLOW` runs one activity that returns its input; its throughput on the
same dev server is the ceiling a report workflow is held against.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

WORKFLOW = "BenchTrivialWorkflow"


@activity.defn(name="bench.echo")
async def echo(value: str) -> str:
    """Returns its input."""
    return value


@workflow.defn(name=WORKFLOW)
class TrivialWorkflow:
    """One activity, nothing else."""

    @workflow.run
    async def run(self, value: str) -> str:
        """Runs the activity once."""
        return await workflow.execute_activity(
            "bench.echo", value, result_type=str, start_to_close_timeout=timedelta(seconds=30)
        )


async def main(address: str, task_queue: str) -> None:
    """Polls until stdin closes."""
    # The mesh's converter (encrypted when SURVEYMESH_PAYLOAD_KEYS is set), like the reports.
    # Imported here, not at the top: the workflow sandbox re-imports this module.
    from surveymesh.codec import configured_data_converter
    from surveymesh.config import Settings

    client = await Client.connect(
        address, data_converter=configured_data_converter(Settings.from_env())
    )
    async with Worker(
        client, task_queue=task_queue, workflows=[TrivialWorkflow], activities=[echo]
    ):
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
