"""Temporal payloads are encrypted: a canary never reaches the server's history in clear.

A tiny workflow and activity (not the pipeline's: this proves the converter) run on the
real dev server with :func:`surveymesh.codec.data_converter`. The canary is in the workflow
input (as a survey answer would be) and in the activity's error message. The raw history,
fetched without the codec, must not contain it anywhere; with the codec (and through the
remote-codec HTTP endpoint, for admins only) it decodes.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from google.protobuf import json_format
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payloads, WorkflowExecution
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from surveymesh.auth import TokenAuthority
from surveymesh.codec import EncryptionCodec, data_converter, load_keys, new_key_entry
from surveymesh.codec_server import bound_port, start
from surveymesh.config import Settings
from tests.conftest import TEST_SECRET

pytestmark = pytest.mark.integration


@activity.defn(name="canary-check-answer")
async def check_answer(answer: str) -> str:
    # The error repeats the input, as careless error messages do: it must be encrypted too.
    raise ApplicationError(f"cannot score answer {answer!r}", non_retryable=True)


@workflow.defn(name="canary-workflow")
class CanaryWorkflow:
    @workflow.run
    async def run(self, answer: str) -> str:
        return await workflow.execute_activity(
            check_answer,
            answer,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


async def _raw_history(env: WorkflowEnvironment, workflow_id: str) -> bytes:
    # Straight from the server's API, no data converter involved: what the server stores.
    resp = await env.client.workflow_service.get_workflow_execution_history(
        GetWorkflowExecutionHistoryRequest(
            namespace=env.client.namespace, execution=WorkflowExecution(workflow_id=workflow_id)
        )
    )
    return resp.history.SerializeToString()


async def test_canary_never_appears_in_the_raw_history(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    canary = f"CANARY-{uuid.uuid4().hex}"
    old_entry = new_key_entry("k-2024")
    settings = Settings(data_dir=tmp_path, payload_keys=old_entry, jwt_secret=TEST_SECRET)
    target = temporal_env.client.service_client.config.target_host
    client = await Client.connect(target, data_converter=data_converter(settings))
    queue = f"canary-{uuid.uuid4().hex[:8]}"
    workflow_id = f"canary-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[CanaryWorkflow],
        activities=[check_answer],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        with pytest.raises(WorkflowFailureError) as failed:
            await client.execute_workflow(
                CanaryWorkflow.run, canary, id=workflow_id, task_queue=queue
            )
    # The client with the codec sees the real error message.
    activity_error = failed.value.cause
    assert isinstance(activity_error, ActivityError)
    assert canary in str(activity_error.cause)

    raw = await _raw_history(temporal_env, workflow_id)
    assert len(raw) > 500  # a real history: started, scheduled, failed...
    assert canary.encode() not in raw
    assert b"cannot score answer" not in raw  # the failure text is encrypted too

    # Rotation: a newer key encrypts from now on, the old one still decrypts this history.
    rotated = Settings(payload_keys=f"{old_entry},{new_key_entry('k-2025')}")
    rotated_client = await Client.connect(target, data_converter=data_converter(rotated))
    history = await rotated_client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    decoded = await EncryptionCodec(load_keys(rotated)).decode(started.input.payloads)
    assert canary.encode() in decoded[0].data
    assert started.input.payloads[0].metadata["encryption-key-id"] == b"k-2024"

    # The remote-codec endpoint decodes for admins only, and answers the UI's preflight.
    runner = await start(settings, host="127.0.0.1", port=0)
    authority = TokenAuthority(TEST_SECRET)
    body = json_format.MessageToJson(Payloads(payloads=list(started.input.payloads)))
    url = f"http://127.0.0.1:{bound_port(runner)}/decode"
    ui = "http://localhost:8233"

    def auth(role: str) -> dict[str, str]:
        token = authority.mint(org="ops", user="oscar", roles=[role])
        return {"Authorization": f"Bearer {token}", "Origin": ui, "X-Namespace": "default"}

    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=body, headers=auth("admin")) as resp:
                assert resp.status == 200
                assert resp.headers["Access-Control-Allow-Origin"] == ui
                out = json_format.Parse(await resp.text(), Payloads())
            assert canary.encode() in out.payloads[0].data
            async with http.post(url, data=body, headers=auth("viewer")) as resp:
                assert resp.status == 403
            async with http.post(url, data=body, headers={"Origin": ui}) as resp:
                assert (resp.status, (await resp.json())["error"]) == (401, "MISSING_CREDENTIALS")
            preflight = {"Origin": ui, "Access-Control-Request-Method": "POST"}
            async with http.options(url, headers=preflight) as resp:
                assert resp.status == 204
                assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            async with http.options(url, headers={**preflight, "Origin": "http://evil"}) as resp:
                assert resp.status == 403
                assert "Access-Control-Allow-Origin" not in resp.headers
            # Encoding round-trips through the endpoint as well.
            enc_url = url.replace("/decode", "/encode")
            async with http.post(
                enc_url, data=json_format.MessageToJson(out), headers=auth("admin")
            ) as resp:
                encoded = json_format.Parse(await resp.text(), Payloads())
            assert canary.encode() not in encoded.SerializeToString()
    finally:
        await runner.cleanup()


async def test_development_key_is_made_once_and_tampering_is_detected(tmp_path: Path) -> None:
    from temporalio.api.common.v1 import Payload

    from surveymesh.codec import PayloadDecryptionError

    settings = Settings(data_dir=tmp_path)
    first = load_keys(settings)
    assert load_keys(settings) == first
    assert (tmp_path / "payload-keys").stat().st_mode & 0o777 == 0o600
    codec = EncryptionCodec(first)
    [sealed] = await codec.encode([Payload(metadata={"encoding": b"json/plain"}, data=b'"x"')])
    tampered = Payload()
    tampered.CopyFrom(sealed)
    tampered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(PayloadDecryptionError):
        await codec.decode([tampered])
    with pytest.raises(PayloadDecryptionError):
        await EncryptionCodec({"other": b"k" * 32}).decode([sealed])
    # Payloads written before encryption was turned on still read.
    plain = Payload(metadata={"encoding": b"json/plain"}, data=b'"y"')
    assert await codec.decode([plain]) == [plain]
