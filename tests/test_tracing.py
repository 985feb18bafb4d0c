"""Traces, when asked for: a server span per request and a child span for its transaction, recorded
by the OpenTelemetry SDK's in-memory exporter. When not asked for, nothing of it is imported."""

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from api.app import create_app
from api.telemetry.tracing import tracer_for
from tests.support import PROJECT, new_user, serving, settings_for


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(scope="module")
def traced_api(api_db_url: str, exporter: InMemorySpanExporter) -> Iterator[str]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with serving(create_app(settings_for(api_db_url), tracer=provider.get_tracer("test"))) as base_url:
        yield base_url


def _server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    # The server span ends once the last byte is sent, which can be after the client has read the
    # answer: wait a moment for it, so a loaded machine does not fail the test.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        spans = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER]
        if spans:
            return spans
        time.sleep(0.01)
    return []


def _spans_of(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    _server_spans(exporter)
    return [
        span for span in exporter.get_finished_spans() if span.context and span.context.trace_id == trace_id
    ]


def test_a_request_and_its_transaction_are_spans(traced_api: str, exporter: InMemorySpanExporter) -> None:
    alice = new_user()
    exporter.clear()
    response = httpx.get(f"{traced_api}{alice.tasks_url}", headers=alice.headers)
    assert response.status_code == 200
    (server,) = _server_spans(exporter)
    assert server.name == "GET /api/{user_id}/tasks"
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/api/{user_id}/tasks"
    assert server.attributes["http.response.status_code"] == 200
    assert server.context is not None
    (transaction,) = [
        span for span in _spans_of(exporter, server.context.trace_id) if span.kind == SpanKind.CLIENT
    ]
    assert transaction.name == "db.transaction"
    assert transaction.parent is not None
    assert transaction.parent.span_id == server.context.span_id
    assert alice.id not in str(server.attributes), "a span names the route, never the user's path"


def test_a_callers_trace_is_continued(traced_api: str, exporter: InMemorySpanExporter) -> None:
    alice = new_user()
    exporter.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    httpx.post(
        f"{traced_api}{alice.tasks_url}",
        json={"title": "traced"},
        headers={**alice.headers, "traceparent": traceparent},
    )
    spans = _spans_of(exporter, int(trace_id, 16))
    assert {span.name for span in spans} == {"POST /api/{user_id}/tasks", "db.transaction"}


def test_without_the_variable_no_tracing_is_loaded() -> None:
    # FastAPI itself imports the OpenTelemetry API; the SDK and the exporter are ours to load.
    probe = (
        "import sys\n"
        "from api.app import create_app\n"
        "from tests.support import settings_for\n"
        "create_app(settings_for('postgresql://nobody@/nowhere'))\n"
        "print([m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))])\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(PROJECT)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=PROJECT, env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_endpoint_setting_turns_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracer_for(settings_for("postgresql://nobody@/nowhere").otel_exporter_otlp_endpoint) is not None
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert tracer_for(settings_for("postgresql://nobody@/nowhere").otel_exporter_otlp_endpoint) is None
