"""Telemetry pieces that need no running mesh: log ids, the JSON-lines span file, the
exporter choice and the metrics ports of ``surveymesh up``."""

from __future__ import annotations

import contextvars
import io
import json
import logging
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from surveymesh.auth import Principal, set_principal
from surveymesh.config import ConfigError, Settings
from surveymesh.logs import JsonFormatter
from surveymesh.mesh import SERVICES, metrics_ports
from surveymesh.telemetry import (
    JsonLinesSpanExporter,
    LogContextFilter,
    log_context,
    trace_destination,
)


def _json_logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(LogContextFilter())
    logger = logging.getLogger("test_telemetry.json")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_json_log_lines_carry_trace_span_report_and_org_ids() -> None:
    stream = io.StringIO()
    logger = _json_logger(stream)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("op") as span, log_context(report_id="r-1", org_id="o-1"):
        logger.info("inside")
    logger.info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    ctx = span.get_span_context()
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert (inside["report_id"], inside["org_id"], inside["message"]) == ("r-1", "o-1", "inside")
    # Outside the span and the block, none of the ids leak into the line.
    assert not {"trace_id", "span_id", "report_id", "org_id"} & outside.keys()


def test_org_id_comes_from_the_authenticated_caller() -> None:
    stream = io.StringIO()
    logger = _json_logger(stream)

    def in_call() -> None:
        set_principal(Principal(user="ann", org="acme", roles=frozenset({"viewer"})))
        logger.info("in a call", extra={"report_id": "explicit"})

    contextvars.copy_context().run(in_call)
    line = json.loads(stream.getvalue())
    assert (line["org_id"], line["report_id"]) == ("acme", "explicit")


def test_json_lines_exporter_appends_one_object_per_span(tmp_path: Path) -> None:
    path = tmp_path / "traces" / "worker.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent") as parent, tracer.start_as_current_span("child"):
        pass
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["name"] for s in spans] == ["child", "parent"]
    trace_id = f"0x{parent.get_span_context().trace_id:032x}"
    assert {s["context"]["trace_id"] for s in spans} == {trace_id}
    assert spans[0]["parent_id"] == spans[1]["context"]["span_id"]


@pytest.mark.parametrize(
    ("env", "dev_mode", "expected"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"},
            True,
            "otlp http://collector:4317",
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4317"}, False, "otlp http://t:4317"),
        ({}, True, "file"),
        ({}, False, "none"),
        ({"OTEL_TRACES_EXPORTER": "console"}, False, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, True, "none"),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}, True, "none"),
    ],
)
def test_trace_exporter_follows_the_otel_variables(
    env: dict[str, str], dev_mode: bool, expected: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, dev_mode=dev_mode)
    where = trace_destination(settings, "reporting", env)
    if expected == "file":
        assert where == str(tmp_path.resolve() / "traces" / "reporting.jsonl")
    else:
        assert where == expected


def test_unknown_trace_exporter_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        trace_destination(Settings(), "worker", {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_up_gives_each_child_its_own_metrics_port() -> None:
    ports = metrics_ports(Settings(metrics_port=9600))
    assert set(ports) == {name for name, *_ in SERVICES} | {"temporal-sdk"}
    assert sorted(ports.values()) == list(range(9600, 9600 + len(SERVICES) + 1))
    assert metrics_ports(Settings(metrics_port=0)) == {}


def test_metrics_ports_are_read_from_the_environment() -> None:
    s = Settings.from_env(
        {"SURVEYMESH_METRICS_PORT": "0", "SURVEYMESH_TEMPORAL_METRICS_PORT": "9999"}
    )
    assert (s.metrics_port, s.temporal_metrics_port) == (0, 9999)
