"""Rendering a stored report in all four formats, over gRPC and over the web viewer's HTTP.

The report's components are the demo survey's, computed with the worker's analytics and
stored with ``reporting_svc.store`` as the activities store them; one free-text answer is
hostile (``<script>``) and must come out as text everywhere.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
import httpx
import orjson
import pypdf
import pytest
from temporalio.testing import WorkflowEnvironment

from bench.report_components import HOSTILE_TEXT, demo_components
from surveymesh.auth import TokenAuthority
from surveymesh.errors import Unauthenticated, error_details
from surveymesh.reporting.v1 import report_pb2
from surveymesh.reporting.v1 import reporting_service_pb2 as pb
from tests.conftest import TEST_SECRET
from tests.integration import report_data
from tests.integration.reporting_stack import K, Md, Stack, reporting_stack, start_reporting

pytestmark = pytest.mark.integration

RESPONSES = 600
MiB = 1024 * 1024


@pytest.fixture(scope="module")
async def stack(
    new_database: Callable[[str], Awaitable[str]],
    temporal_env: WorkflowEnvironment,
    token_for: Callable[..., Md],
) -> AsyncIterator[Stack]:
    async with reporting_stack(new_database, temporal_env.client, token_for) as s:
        yield s


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    return demo_components(RESPONSES)


@pytest.fixture(scope="module")
async def completed(stack: Stack, components: dict[str, Any]) -> tuple[str, str]:
    """(org, report id) of a COMPLETED full report with every demo component."""
    org = "org-render"
    report = await stack.generate(org, kind=K.REPORT_KIND_FULL)
    await report_data.store_report(stack.pool, report.id, components)
    return org, report.id


def bearer(stack: Stack, org: str, role: str = "viewer") -> dict[str, str]:
    return dict(stack.token_for(org, role=role))


async def render(
    stack: Stack, org: str, report_id: str, fmt: int
) -> tuple[pb.RenderReportResponse, bytes]:
    msgs = [
        m
        async for m in stack.stub.RenderReport(
            pb.RenderReportRequest(report_id=report_id, format=fmt),  # type: ignore[arg-type]
            metadata=stack.token_for(org, role="viewer"),
            timeout=90,
        )
    ]
    assert all(m.ByteSize() <= MiB for m in msgs)
    body = b"".join(m.chunk for m in msgs)
    assert len(body) == msgs[0].total_size
    return msgs[0], body


def grpc_reason(token: str) -> str:
    """The reason gRPC's interceptor gives for ``token`` (the viewer must give the same)."""
    try:
        TokenAuthority(TEST_SECRET).verify(token)
    except Unauthenticated as e:
        return e.reason
    raise AssertionError("the token verified")


def web(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.reporting.handle.web_port}"  # type: ignore[attr-defined]


async def test_html_is_self_contained_with_charts_and_escaped_quotes(
    stack: Stack, completed: tuple[str, str]
) -> None:
    org, rid = completed
    first, body = await render(stack, org, rid, report_pb2.RENDER_FORMAT_HTML)
    assert first.content_type == "text/html; charset=utf-8"
    assert first.filename == f"report-{rid}.html"
    html = body.decode()
    assert report_data.TITLE in html
    assert html.count("<svg") >= 10  # charts drawn from the stored Vega-Lite specs
    assert "<script" not in html  # static: no script at all, so certainly not the quote's
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in html
    # Nothing is fetched: no src/href/url() pointing anywhere (SVG namespaces are not fetches).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"url\((?!#)", html)  # only references within the page
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))  # the charts' SVG ids do not collide
    for heading in (
        "Net Promoter Score",
        "Question by question",
        "Segments",
        "Sentiment",
        "Themes",
    ):
        assert f"<h2>{heading}" in html


async def test_pdf_has_the_report_text_and_page_numbers(
    stack: Stack, completed: tuple[str, str], components: dict[str, Any]
) -> None:
    org, rid = completed
    first, body = await render(stack, org, rid, report_pb2.RENDER_FORMAT_PDF)
    assert first.content_type == "application/pdf"
    reader = pypdf.PdfReader(io.BytesIO(body))
    pages = len(reader.pages)
    assert pages >= 3
    text = "\n".join(p.extract_text() for p in reader.pages)
    flat = " ".join(text.split())
    assert "Customer Experience" in flat
    assert "Net Promoter Score" in flat
    score = components["nps"]["questions"][0]["score"]
    assert f"{round(score):+d}".replace("-", "\u2212") in flat
    assert f"Page 1 of {pages}" in flat and f"Page {pages} of {pages}" in flat
    # The hostile quote is printed as text (compared without the line breaks of layout).
    assert "".join(HOSTILE_TEXT.split()) in "".join(text.split())


async def test_csv_zip_has_tidy_tables_matching_the_components(
    stack: Stack, completed: tuple[str, str], components: dict[str, Any]
) -> None:
    org, rid = completed
    first, body = await render(stack, org, rid, report_pb2.RENDER_FORMAT_CSV)
    assert first.content_type == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(body))
    tables = {
        name.removesuffix(".csv"): list(csv.DictReader(io.StringIO(zf.read(name).decode())))
        for name in zf.namelist()
    }
    assert {"report", "basic_stats", "nps", "csat", "question_stats_options", "segments_tests",
            "sentiment", "sentiment_quotes", "themes", "themes_evidence", "visualizations"} <= set(tables)  # fmt: skip
    nps = components["nps"]["questions"][0]
    row = tables["nps"][0]
    assert row["question_id"] == nps["question_id"]
    assert float(row["score"]) == pytest.approx(nps["score"])
    assert int(row["promoters"]) == nps["promoters"]
    options = [r for r in tables["question_stats_options"] if r["question_id"] == "plan_fit"]
    want = next(
        q for q in components["question_stats"]["questions"] if q["question_id"] == "plan_fit"
    )
    assert [(r["option"], int(r["count"])) for r in options] == [
        (o["option"], o["count"]) for o in want["options"]
    ]
    tests = tables["segments_tests"]
    assert len(tests) == sum(len(s["questions"]) for s in components["segments"]["segments"])


async def test_json_round_trips(
    stack: Stack, completed: tuple[str, str], components: dict[str, Any]
) -> None:
    org, rid = completed
    first, body = await render(stack, org, rid, report_pb2.RENDER_FORMAT_JSON)
    assert first.content_type == "application/json"
    doc = orjson.loads(body)
    assert doc["report"]["id"] == rid
    for name, data in components.items():
        assert doc["components"][name]["data"] == orjson.loads(report_data.encode(data))


async def test_web_downloads_answer_like_render_report(
    stack: Stack, completed: tuple[str, str]
) -> None:
    org, rid = completed
    async with httpx.AsyncClient(base_url=web(stack), timeout=90) as client:
        for ext, ctype, magic in (
            ("pdf", "application/pdf", b"%PDF-"),
            ("csv", "application/zip", b"PK"),
            ("json", "application/json", b"{"),
            ("html", "text/html; charset=utf-8", b"<!DOCTYPE html>"),
        ):
            r = await client.get(f"/reports/{rid}.{ext}", headers=bearer(stack, org))
            assert r.status_code == 200, (ext, r.text[:200])
            assert r.headers["content-type"] == ctype
            assert r.content.startswith(magic)
            disposition = "inline" if ext == "html" else "attachment"
            assert r.headers["content-disposition"].startswith(disposition)
        page = await client.get(f"/reports/{rid}", headers=bearer(stack, org))
        assert page.status_code == 200
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert 'src="/static/vendor/vega-embed.min.js"' in page.text
        assert HOSTILE_TEXT not in page.text
        vendor = await client.get("/static/vendor/vega-embed.min.js")
        assert vendor.status_code == 200 and "javascript" in vendor.headers["content-type"]


async def test_web_access_is_checked_like_grpc(stack: Stack, completed: tuple[str, str]) -> None:
    org, rid = completed
    missing = "00000000-0000-4000-8000-000000000000"
    async with httpx.AsyncClient(base_url=web(stack), timeout=30) as client:
        anonymous = await client.get(f"/reports/{rid}")
        assert anonymous.status_code == 401
        assert anonymous.headers["x-error-reason"] == "MISSING_CREDENTIALS"
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        forged = await client.get(f"/reports/{rid}", headers={"Authorization": "Bearer nope"})
        assert (forged.status_code, forged.headers["x-error-reason"]) == (401, grpc_reason("nope"))
        # Another org's report answers exactly as a missing one, page and downloads alike.
        for path in ("/reports/{}", "/reports/{}.pdf", "/reports/{}/events"):
            foreign = await client.get(path.format(rid), headers=bearer(stack, "org-other"))
            absent = await client.get(path.format(missing), headers=bearer(stack, org))
            assert foreign.status_code == absent.status_code == 404
            assert (
                foreign.headers["x-error-reason"]
                == absent.headers["x-error-reason"]
                == "REPORT_NOT_FOUND"
            )
            assert foreign.content == absent.content
        malformed = await client.get("/reports/not-a-uuid", headers=bearer(stack, org))
        assert malformed.status_code == 404 and malformed.content == absent.content
        # The cookie works as the header does; ?token= does not outside development mode.
        token = bearer(stack, org)["authorization"].removeprefix("Bearer ")
        async with httpx.AsyncClient(
            base_url=web(stack), cookies={"surveymesh_token": token}, timeout=30
        ) as with_cookie:
            by_cookie = await with_cookie.get(f"/reports/{rid}.json")
        assert by_cookie.status_code == 200
        by_query = await client.get(f"/reports/{rid}?token={token}")
        assert (by_query.status_code, by_query.headers["x-error-reason"]) == (
            401,
            "URL_TOKEN_NOT_ALLOWED",
        )


async def test_token_link_signs_in_only_in_dev_mode(
    stack: Stack, completed: tuple[str, str]
) -> None:
    org, rid = completed
    dev, channel, _ = await start_reporting(replace(stack.settings, dev_mode=True), stack.temporal)
    try:
        base = f"http://127.0.0.1:{dev.handle.web_port}"  # type: ignore[attr-defined]
        token = bearer(stack, org)["authorization"].removeprefix("Bearer ")
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            bad = await client.get(f"/reports/{rid}?token=forged")
            assert (bad.status_code, bad.headers["x-error-reason"]) == (401, grpc_reason("forged"))
            login = await client.get(f"/reports/{rid}?token={token}&x=1")
            assert login.status_code == 303
            assert login.headers["location"] == f"/reports/{rid}?x=1"
            cookie = login.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
            page = await client.get(login.headers["location"])  # the client keeps the cookie
            assert page.status_code == 200
            assert report_data.TITLE in page.text
    finally:
        await channel.close()
        await dev.stop(0)


async def test_unfinished_report_has_a_page_but_no_downloads(stack: Stack) -> None:
    org = "org-render-running"
    report = await stack.generate(org, kind=K.REPORT_KIND_FULL)
    await report_data.start(stack.pool, report.id)
    async with httpx.AsyncClient(base_url=web(stack), timeout=30) as client:
        pdf = await client.get(f"/reports/{report.id}.pdf", headers=bearer(stack, org))
        assert (pdf.status_code, pdf.headers["x-error-reason"]) == (409, "REPORT_NOT_COMPLETED")
        page = await client.get(f"/reports/{report.id}", headers=bearer(stack, org))
        assert page.status_code == 200
        assert 'data-running="true"' in page.text
        assert "section-pending" in page.text  # placeholders for the sections to come
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await render(stack, org, report.id, report_pb2.RENDER_FORMAT_HTML)
    assert (info.value.code(), error_details(info.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "REPORT_NOT_COMPLETED",
    )
