"""Mutual TLS between the parts: certificates made here with ``cryptography``.

Delivery and Reporting run with ``SURVEYMESH_TLS_CLIENT_AUTH=require`` and
``SURVEYMESH_PLAINTEXT=false``; Reporting reaches Delivery over mTLS with its own
certificate. A client with a certificate signed by the CA is served; a client without one,
one with a certificate of another CA, and a plaintext client are refused at the handshake.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from temporalio.testing import WorkflowEnvironment

from delivery_svc.server import create_server as create_delivery
from reporting_svc.server import create_server as create_reporting
from surveymesh.channels import open_channel, server_credentials
from surveymesh.config import ConfigError, Settings
from surveymesh.delivery.v1 import delivery_service_pb2 as dpb
from surveymesh.delivery.v1 import delivery_service_pb2_grpc as dpb_grpc
from surveymesh.delivery.v1 import survey_pb2
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as rpb
from surveymesh.reporting.v1 import reporting_service_pb2_grpc as rpb_grpc
from tests.conftest import TEST_SECRET
from tests.integration.pki import BOTH, make_pki

pytestmark = pytest.mark.integration

Md = tuple[tuple[str, str], ...]


async def _list_surveys(channel: grpc.aio.Channel, metadata: Md) -> grpc.StatusCode:
    try:
        await dpb_grpc.DeliveryServiceStub(channel).ListSurveys(
            dpb.ListSurveysRequest(), metadata=metadata, timeout=5
        )
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_mesh_with_mutual_tls_refuses_clients_without_a_certificate(
    new_database: Callable[[str], Any],
    temporal_env: WorkflowEnvironment,
    token_for: Callable[..., Md],
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path, "mesh", {"service": BOTH, "client": [BOTH[1]]})
    rogue = make_pki(tmp_path, "rogue", {"client": [BOTH[1]]})
    service_cert, service_key = pki.files["service"]

    def mtls(**kw: Any) -> Settings:
        return Settings(
            jwt_secret=TEST_SECRET,
            tls_cert=str(service_cert),
            tls_key=str(service_key),
            tls_ca=str(pki.ca),
            tls_client_auth="require",
            plaintext=False,
            reflection=False,
            **kw,
        )

    delivery = await create_delivery(
        mtls(database_url=await new_database("tls_delivery")), address="localhost:0"
    )
    reporting = await create_reporting(
        mtls(
            database_url=await new_database("tls_reporting"),
            delivery_address=f"localhost:{delivery.port}",
            task_queue_prefix=f"tq-{uuid.uuid4().hex[:8]}-",
        ),
        address="localhost:0",
        temporal_client=temporal_env.client,
    )
    org = f"org-{uuid.uuid4().hex[:8]}"
    meta = token_for(org, role="analyst")
    address = f"localhost:{delivery.port}"
    client_cert, client_key = pki.files["client"]
    try:
        # A client with a certificate of the mesh CA is served, by both services; Reporting
        # itself calls Delivery over mTLS (GenerateReport checks the survey there).
        with_cert = Settings(tls_ca=str(pki.ca), tls_cert=str(client_cert), tls_key=str(client_key))
        async with open_channel(with_cert, address) as channel:
            assert await _list_surveys(channel, meta) == grpc.StatusCode.OK
            created = await dpb_grpc.DeliveryServiceStub(channel).CreateSurvey(
                dpb.CreateSurveyRequest(
                    survey=survey_pb2.Survey(
                        title="TLS",
                        questions=[
                            survey_pb2.Question(
                                id="q", text="Score?", type=survey_pb2.QUESTION_TYPE_NPS
                            )
                        ],
                    )
                ),
                metadata=meta,
                timeout=5,
            )
        async with open_channel(with_cert, f"localhost:{reporting.port}") as channel:
            report = await rpb_grpc.ReportingServiceStub(channel).GenerateReport(
                rpb.GenerateReportRequest(
                    survey_id=created.survey.id,
                    kind=report_pb2.REPORT_KIND_QUICK,
                    request_id=uuid.uuid4().hex,
                ),
                metadata=meta,
                timeout=20,
            )
            assert report.report.state == report_pb2.REPORT_STATE_QUEUED

        # Refused at the handshake: no client certificate, another CA's, or no TLS at all.
        rogue_cert, rogue_key = rogue.files["client"]
        refused = {
            "no client certificate": open_channel(Settings(tls_ca=str(pki.ca)), address),
            "certificate of another CA": open_channel(
                Settings(tls_ca=str(pki.ca), tls_cert=str(rogue_cert), tls_key=str(rogue_key)),
                address,
            ),
            "plaintext": grpc.aio.insecure_channel(address),
        }
        for name, channel in refused.items():
            async with channel:
                assert await _list_surveys(channel, meta) == grpc.StatusCode.UNAVAILABLE, name
    finally:
        await reporting.stop(0)
        await delivery.stop(0)


def test_plaintext_false_refuses_to_start_or_connect_without_tls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        server_credentials(Settings(plaintext=False))
    with pytest.raises(ConfigError):
        open_channel(Settings(plaintext=False), "localhost:1")
    with pytest.raises(ConfigError):
        # Requiring client certificates without a CA to check them against is a mistake.
        pki = make_pki(tmp_path, "x", {"s": BOTH})
        cert, key = pki.files["s"]
        server_credentials(
            Settings(tls_cert=str(cert), tls_key=str(key), tls_client_auth="require")
        )
