"""Traces, when asked for: a server span per request and a child span for its transaction, recorded
by the OpenTelemetry SDK's in-memory exporter, or, from `todo-api serve`, by an OTLP/HTTP collector
of the test's own. When not asked for, nothing of it is imported."""

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from api.app import create_app
from api.settings import Settings
from api.telemetry.tracing import traces_for
from tests.support import (
    PROJECT,
    SECRET,
    assert_problem,
    break_task_updates,
    cli_env,
    free_port,
    new_user,
    scrape,
    serve_command,
    serve_process,
    serving,
    serving_client,
    settings_for,
    value,
    wait_until_it_waits_for,
)


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


@contextmanager
def _traced(settings: Settings) -> Iterator[tuple[httpx.Client, InMemorySpanExporter]]:
    """An app of the test's own, on a database of its own, and the spans it records."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with serving_client(create_app(settings, tracer=provider.get_tracer("test"))) as client:
        yield client, exporter


def _server_span_answering(exporter: InMemorySpanExporter, status: int) -> ReadableSpan:
    """The one server span that answered `status`, waited for as `_server_spans` does."""
    deadline = time.monotonic() + 5
    while True:
        spans = [
            span
            for span in exporter.get_finished_spans()
            if span.kind == SpanKind.SERVER
            and span.attributes is not None
            and span.attributes.get("http.response.status_code") == status
        ]
        if spans:
            (span,) = spans
            return span
        assert time.monotonic() < deadline, f"no server span answered {status}"
        time.sleep(0.01)


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


def test_a_callers_tracestate_is_kept_to_what_w3c_asks_a_tracer_to_pass_on(
    traced_api: str, exporter: InMemorySpanExporter
) -> None:
    """Any client's tracestate, up to 32 entries of hundreds of characters, was copied as it came onto
    every span of its request: kilobytes a span for the collector to store (6.5 KB each, seen on serve
    --workers 2). W3C Trace Context passes on 512 characters, dropping entries over 128 first, then
    entries from the end; a tracestate within that is kept as it is."""
    alice = new_user()
    short = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    padded = [f"k{n}={'v' * 200}" for n in range(31)]
    mixed = ",".join(["first=1", padded[0], *[f"s{n}={'w' * 60}" for n in range(20)]])
    sent = {
        "4bf92f3577b34da6a3ce929d0e0e4730": short,
        "4bf92f3577b34da6a3ce929d0e0e4731": ",".join(padded),
        "4bf92f3577b34da6a3ce929d0e0e4732": mixed,
    }
    exporter.clear()
    for trace, tracestate in sent.items():
        answered = httpx.get(
            f"{traced_api}{alice.tasks_url}",
            headers={
                **alice.headers,
                "traceparent": f"00-{trace}-00f067aa0ba902b7-01",
                "tracestate": tracestate,
            },
        )
        assert answered.status_code == 200
    kept = {}
    deadline = time.monotonic() + 5  # a server span ends once its last byte is sent
    for trace in sent:
        spans = _spans_of(exporter, int(trace, 16))
        while {span.kind for span in spans} != {SpanKind.SERVER, SpanKind.CLIENT}:
            assert time.monotonic() < deadline, f"no server span and transaction span of trace {trace}"
            time.sleep(0.01)
            spans = _spans_of(exporter, int(trace, 16))
        (kept[trace],) = {span.context.trace_state.to_header() for span in spans if span.context}
    short_kept, padded_kept, mixed_kept = kept.values()
    assert short_kept == short
    assert padded_kept == ""
    assert len(mixed_kept) <= 512
    assert mixed_kept.split(",")[:2] == ["first=1", f"s0={'w' * 60}"], "the long entry goes first"
    assert mixed_kept == mixed.replace(f",{padded[0]}", "")[: len(mixed_kept)], "then entries from the end"


def test_a_method_the_api_does_not_know_names_no_span(
    traced_api: str, exporter: InMemorySpanExporter
) -> None:
    """Any token is a method a client may send: each one made a span name of its own, and carried
    itself into the span, as many as a client cared to invent. OpenTelemetry's HTTP conventions name
    such a span HTTP and its method _OTHER, as the metrics count it OTHER."""
    alice = new_user()
    exporter.clear()
    invented = [f"INVENTED{n}" for n in range(3)]
    for method in invented:
        assert httpx.request(method, f"{traced_api}{alice.tasks_url}").status_code == 405
    deadline = time.monotonic() + 5
    while len(_server_spans(exporter)) < len(invented) and time.monotonic() < deadline:
        time.sleep(0.01)
    spans = _server_spans(exporter)
    assert [span.name for span in spans] == ["HTTP /api/{user_id}/tasks"] * len(invented)
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["http.request.method"] == "_OTHER"
        assert not any(method in str(span.attributes) for method in invented)


def test_a_path_no_route_matches_names_its_span_by_the_method_alone(
    traced_api: str, exporter: InMemorySpanExporter
) -> None:
    """OpenTelemetry's HTTP conventions: with no route template, a server span is named by its method
    and has no http.route. It was `GET (unmatched)` with http.route `(unmatched)`, a route no trace
    backend could tell from a real one."""
    exporter.clear()
    assert httpx.get(f"{traced_api}/no/such/path").status_code == 404
    deadline = time.monotonic() + 5
    while not _server_spans(exporter) and time.monotonic() < deadline:
        time.sleep(0.01)
    (span,) = _server_spans(exporter)
    assert span.name == "GET"
    assert span.attributes is not None
    assert "http.route" not in span.attributes
    assert span.attributes["http.response.status_code"] == 404


def test_a_5xx_answer_is_an_error_span_and_a_4xx_is_not(
    migrated_db: psycopg.Connection[Any], migrated_db_url: str
) -> None:
    """OpenTelemetry's HTTP conventions: a server span answering 5xx has status Error, one answering
    4xx none. Every span's status was unset, so a trace backend counted no server errors."""
    alice, bob = new_user(), new_user()
    settings = settings_for(
        migrated_db_url,
        db_pool_size=1,
        db_pool_timeout_seconds=1,
        # The write waits for the lock, not for a timeout, however slow the machine.
        db_statement_timeout_ms=120_000,
        # The periodic isolation check takes a pooled connection too; not during this test.
        isolation_check_interval_seconds=3600,
    )
    with _traced(settings) as (client, exporter), ThreadPoolExecutor(1) as sender:
        task = client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).json()
        migrated_db.execute("select 1 from tasks where id = %s for update", [task["id"]])
        update = sender.submit(
            client.put, alice.task_url(task["id"]), json={"title": "after"}, headers=alice.headers
        )
        wait_until_it_waits_for(migrated_db, update)
        # The one connection waits on the lock: bob's request waits the pool timeout for it in vain.
        unavailable = client.get(bob.tasks_url, headers=bob.headers)
        unauthorized = client.get(bob.tasks_url)
        migrated_db.rollback()
        updated = update.result()

    assert_problem(unavailable, 503, "database-unavailable")
    assert unauthorized.status_code == 401
    assert updated.status_code == 200, updated.text
    refused = _server_span_answering(exporter, 503)
    assert refused.status.status_code == StatusCode.ERROR
    assert refused.context is not None
    # It waited for a connection and never got one: it sent the database nothing, so no transaction
    # (a probe's trace showed a failed 5 s db.transaction for a request the database never saw).
    sent = [
        span.name for span in _spans_of(exporter, refused.context.trace_id) if span.kind == SpanKind.CLIENT
    ]
    assert sent == []
    assert _server_span_answering(exporter, 401).status.status_code == StatusCode.UNSET
    assert _server_span_answering(exporter, 200).status.status_code == StatusCode.UNSET
    stored = migrated_db.execute("select title from tasks where id = %s", [task["id"]]).fetchall()
    assert stored == [("after",)]


def test_a_bugs_span_names_its_route_and_500_and_is_an_error(
    migrated_db: psycopg.Connection[Any], migrated_db_url: str
) -> None:
    """An exception that escaped the app skipped the end of the span: it had no route, no status
    code, and its name was the bare method."""
    alice = new_user()
    with _traced(settings_for(migrated_db_url)) as (client, exporter):
        task = client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).json()
        break_task_updates(migrated_db)
        migrated_db.commit()
        broken = client.put(alice.task_url(task["id"]), json={"title": "after"}, headers=alice.headers)

    assert_problem(broken, 500, "internal-error")
    span = _server_span_answering(exporter, 500)
    assert span.name == "PUT /api/{user_id}/tasks/{task_id}"
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/api/{user_id}/tasks/{task_id}"
    assert span.status.status_code == StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"], "the span records the exception"
    stored = migrated_db.execute("select title from tasks where id = %s", [task["id"]]).fetchall()
    assert stored == [("before",)]


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


def test_the_endpoint_settings_turn_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def traced() -> bool:  # the environment's settings, as `serve` reads them (settings_for reads none)
        settings = Settings(
            _env_file=None, database_url="postgresql://nobody@/nowhere", better_auth_secret=SECRET
        )
        return (
            traces_for(settings.otel_exporter_otlp_endpoint, settings.otel_exporter_otlp_traces_endpoint)
            is not None
        )

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert traced()
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert not traced()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")
    assert traced()


@dataclass
class Collector:
    """An OTLP/HTTP collector on loopback: what `todo-api serve` exports, by the path it was sent to."""

    base_url: str
    received: list[tuple[str, ExportTraceServiceRequest]] = field(default_factory=list)

    def server_spans(self, trace_id: str) -> list[dict[str, Any]]:
        """The server spans of the trace `trace_id` (hex), each with its resource's attributes."""
        found = []
        for _, request in self.received:
            for resource_spans in request.resource_spans:
                resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        if span.trace_id.hex() == trace_id and span.kind == span.SPAN_KIND_SERVER:
                            found.append(
                                {"name": span.name, "resource": resource, "span_id": span.span_id.hex()}
                            )
        return found

    def wait_for_server_span(self, trace_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while not (spans := self.server_spans(trace_id)):
            assert time.monotonic() < deadline, f"no server span of trace {trace_id} reached the collector"
            time.sleep(0.05)
        (span,) = spans
        return span


@contextmanager
def _collector() -> Iterator[Collector]:
    received: list[tuple[str, ExportTraceServiceRequest]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, request))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Collector(f"http://127.0.0.1:{server.server_port}", received)
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _serve_traced(database_url: str, tmp_path: Path, **variables: str) -> Iterator[tuple[str, Path]]:
    """`todo-api serve` exporting its spans at once (OTEL_BSP_SCHEDULE_DELAY), with `variables`;
    yields its base URL and the file of everything it wrote, and stops it with SIGTERM."""
    env = cli_env(
        DATABASE_URL=database_url,
        BETTER_AUTH_SECRET=SECRET,
        **{"OTEL_BSP_SCHEDULE_DELAY": "50", **variables},
    )
    log = tmp_path / "serve.log"
    with serve_process(serve_command(env), cwd=tmp_path, env=env, output=log) as (base_url, _):
        yield base_url, log


def test_a_callers_unsampled_trace_leaves_no_span_and_its_request_is_logged_and_counted_as_answered(
    migrated_db_url: str, tmp_path: Path
) -> None:
    """A traceparent that says not sampled, which any client may send, made the sampler drop the span,
    and ending it then read a name a dropped span does not have: each such request, answered 200, was
    logged as an unhandled error with a traceback and counted and logged as a 500."""
    alice = new_user()
    unsampled_trace, sampled_trace = "4bf92f3577b34da6a3ce929d0e0e4736", "5bf92f3577b34da6a3ce929d0e0e4737"
    with (
        _collector() as collector,
        _serve_traced(migrated_db_url, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=collector.base_url) as (
            base_url,
            log,
        ),
        httpx.Client(base_url=base_url) as client,
    ):
        unsampled = client.get(
            alice.tasks_url,
            headers={**alice.headers, "traceparent": f"00-{unsampled_trace}-00f067aa0ba902b7-00"},
        )
        sampled = client.get(
            alice.tasks_url,
            headers={**alice.headers, "traceparent": f"00-{sampled_trace}-00f067aa0ba902b7-01"},
        )
        assert collector.wait_for_server_span(sampled_trace)["name"] == "GET /api/{user_id}/tasks"
        samples = scrape(base_url)
    assert (unsampled.status_code, sampled.status_code) == (200, 200)
    assert collector.server_spans(unsampled_trace) == []
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert [r for r in records if r["level"] == "ERROR"] == []
    (access,) = [r for r in records if r.get("request_id") == unsampled.headers["x-request-id"]]
    assert (access["name"], access["status"]) == ("api.access", 200)
    route = "/api/{user_id}/tasks"
    assert value(samples, "todo_api_http_requests_total", method="GET", route=route, status="200") == 2
    assert value(samples, "todo_api_http_requests_total", method="GET", route=route, status="500") == 0


def _access_lines(log: Path) -> dict[str, dict[str, Any]]:
    """The access lines `todo-api serve` wrote to `log`, by request id."""
    records = (json.loads(line) for line in log.read_text().splitlines() if line.strip())
    return {record["request_id"]: record for record in records if record["name"] == "api.access"}


def test_an_access_line_names_the_trace_and_span_of_its_request(migrated_db_url: str, tmp_path: Path) -> None:
    """An operator looking at a slow or failed request's access line had no way to its trace, nor
    from a trace to the line: the line carried a request id the spans do not, and no trace id. Each
    line now names the ids of its request's server span: the caller's trace when it sent one, else
    the one the request began; and none when that span was not recorded, whose ids no collector holds."""
    alice = new_user()
    callers_trace, unsampled_trace = "9bf92f3577b34da6a3ce929d0e0e473b", "abf92f3577b34da6a3ce929d0e0e473c"
    with (
        _collector() as collector,
        _serve_traced(migrated_db_url, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=collector.base_url) as (
            base_url,
            log,
        ),
        httpx.Client(base_url=base_url) as client,
    ):
        continued = client.get(
            alice.tasks_url,
            headers={**alice.headers, "traceparent": f"00-{callers_trace}-00f067aa0ba902b7-01"},
        )
        begun = client.get(alice.tasks_url)
        unsampled = client.get(
            alice.tasks_url,
            headers={**alice.headers, "traceparent": f"00-{unsampled_trace}-00f067aa0ba902b7-00"},
        )
        # Each access line is written once its answer is sent, which can be after the client read it.
        asked = {answer.headers["x-request-id"] for answer in (continued, begun, unsampled)}
        deadline = time.monotonic() + 10
        while not asked <= set(records := _access_lines(log)):
            assert time.monotonic() < deadline, "an access line is missing"
            time.sleep(0.05)
        continued_line = records[continued.headers["x-request-id"]]
        begun_line = records[begun.headers["x-request-id"]]
        assert continued_line["trace_id"] == callers_trace
        assert collector.wait_for_server_span(callers_trace)["span_id"] == continued_line["span_id"]
        begun_span = collector.wait_for_server_span(begun_line["trace_id"])
        assert (begun_span["name"], begun_span["span_id"]) == (
            "GET /api/{user_id}/tasks",
            begun_line["span_id"],
        )
    assert (continued.status_code, begun.status_code, unsampled.status_code) == (200, 401, 200)
    assert begun_line["trace_id"] != callers_trace
    unsampled_line = records[unsampled.headers["x-request-id"]]
    assert {"trace_id", "span_id"}.isdisjoint(unsampled_line)


def test_spans_name_the_service_todo_api_unless_the_environment_names_another(
    migrated_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's own resource, merged over ours, named every span's service unknown_service:python."""
    alice, trace = new_user(), "6bf92f3577b34da6a3ce929d0e0e4738"
    with (
        _collector() as collector,
        _serve_traced(migrated_db_url, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=collector.base_url) as (
            base_url,
            _,
        ),
    ):
        httpx.get(
            f"{base_url}{alice.tasks_url}",
            headers={**alice.headers, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
        )
        assert collector.wait_for_server_span(trace)["resource"]["service.name"] == "todo-api"
    endpoint = "http://127.0.0.1:4318"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,deployment.environment=test")
    assert _resource_of(traces_for(endpoint))["service.name"] == "from-attributes"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-service-name")
    named = _resource_of(traces_for(endpoint))
    assert (named["service.name"], named["deployment.environment"]) == ("from-service-name", "test")


def _resource_of(traces: TracerProvider | None) -> dict[str, Any]:
    assert traces is not None
    return dict(traces.resource.attributes)


def test_the_traces_endpoint_takes_the_place_of_the_base_endpoint(
    migrated_db_url: str, tmp_path: Path
) -> None:
    """OpenTelemetry's OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, the URL traces go to as it is, wins over the
    base URL's /v1/traces. It was not read: traces went to another collector than the one named."""
    alice, trace = new_user(), "7bf92f3577b34da6a3ce929d0e0e4739"
    with (
        _collector() as base,
        _collector() as traces,
        _serve_traced(
            migrated_db_url,
            tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT=base.base_url,
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{traces.base_url}/tenant-7/traces",
        ) as (base_url, _),
    ):
        httpx.get(
            f"{base_url}{alice.tasks_url}",
            headers={**alice.headers, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
        )
        assert traces.wait_for_server_span(trace)["name"] == "GET /api/{user_id}/tasks"
    assert {path for path, _ in traces.received} == {"/tenant-7/traces"}
    assert base.received == []


def test_the_spans_of_the_last_requests_are_sent_when_serve_stops(
    migrated_db_url: str, tmp_path: Path
) -> None:
    """A worker ends by os._exit, past the SDK's atexit hook: the spans it still held in its batch, up
    to OTEL_BSP_SCHEDULE_DELAY's worth (5 s by default: the requests of a deploy's last moments), were
    never sent."""
    alice, trace = new_user(), "8bf92f3577b34da6a3ce929d0e0e473a"
    with _collector() as collector:
        with _serve_traced(
            migrated_db_url,
            tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.base_url,
            OTEL_BSP_SCHEDULE_DELAY="600000",  # no batch is sent by time while it serves
        ) as (base_url, _):
            answered = httpx.get(
                f"{base_url}{alice.tasks_url}",
                headers={**alice.headers, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
            )
        assert answered.status_code == 200
        assert collector.wait_for_server_span(trace)["name"] == "GET /api/{user_id}/tasks"


def test_a_collector_that_does_not_answer_holds_no_stop(migrated_db_url: str, tmp_path: Path) -> None:
    """Sending the last spans waits a moment, not the exporter's timeout and retries (two minutes here,
    so that a loaded machine's slow stop is told apart from it)."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = cli_env(
        DATABASE_URL=migrated_db_url,
        BETTER_AUTH_SECRET=SECRET,
        OTEL_EXPORTER_OTLP_ENDPOINT=closed,
        OTEL_BSP_SCHEDULE_DELAY="600000",
        OTEL_EXPORTER_OTLP_TIMEOUT="120",
    )
    with serve_process(serve_command(env), cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (
        base_url,
        process,
    ):
        alice = new_user()
        assert httpx.get(f"{base_url}{alice.tasks_url}", headers=alice.headers).status_code == 200
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=110) == 0
        assert time.monotonic() - asked < 60
