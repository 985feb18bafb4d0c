"""OpenTelemetry traces, when asked for: each request a server span, its transaction a child span.

Off unless the `otel` extra is installed (`pip install 'todo-api[otel]'`) and
OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (in the environment or .env,
like every setting); then spans go over OTLP/HTTP to the traces URL as it is, else to
`{endpoint}/v1/traces`, as the standard variables mean, and the SDK's other OTEL_* variables apply.
While off, nothing of the SDK is imported and no request pays for it: the middleware and the database
are built without a tracer.

The spans are placed by hand rather than by the ASGI and psycopg instrumentation packages, which
cost more per request: three spans on the HTTP side and a wrapper around every cursor
(bench/RESULTS.md, "Traces").
"""

import asyncio
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context as Context
    from opentelemetry.sdk.trace import TracerProvider as TracerProvider
    from opentelemetry.trace import Span as Span
    from opentelemetry.trace import Tracer as Tracer
else:
    Context = Span = Tracer = TracerProvider = Any

logger = logging.getLogger(__name__)

# What a server span is named by when its method is none the API knows (OpenTelemetry's HTTP conventions).
_ANY_METHOD = "HTTP"
# How long a stopping worker waits for its last spans to be sent: a collector that answers takes
# milliseconds; one that does not would hold the stop for the exporter's own timeout and retries.
_LAST_SPANS_SECONDS = 2.0
# W3C Trace Context ("tracestate Limits"): 512 characters of a tracestate are all a tracer need pass
# on, and one cut to that drops its entries over 128 characters first, then entries from its end.
_TRACE_STATE_CHARACTERS = 512
_LONG_ENTRY_CHARACTERS = 128


def traces_for(endpoint: str | None, traces_endpoint: str | None = None) -> "TracerProvider | None":
    """Traces exported over OTLP/HTTP to `traces_endpoint`, else to the collector at `endpoint`, if
    either is set and the extra installed. Its owner ends it with `send_last_spans` when done serving."""
    if not (endpoint or traces_endpoint):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(
            "an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), "
            "but tracing is not installed: "
            "pip install 'todo-api[otel]'; serving without traces"
        )
        return None
    # OTEL_SERVICE_NAME, or a service.name in OTEL_RESOURCE_ATTRIBUTES, takes precedence over this
    # name; Resource.create() alone would name the service unknown_service:python.
    named = Resource({SERVICE_NAME: "todo-api"}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=Resource.create(named.attributes))
    # As OpenTelemetry defines them: the traces URL as it is, else the base URL with the traces' path.
    url = traces_endpoint or f"{(endpoint or '').rstrip('/')}/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    return provider


async def send_last_spans(traces: "TracerProvider") -> None:
    """Send the spans still batched, the last requests', and stop exporting. A worker ends by os._exit,
    past the SDK's own atexit hook, so without this they were never sent. In a daemon thread waited
    for at most _LAST_SPANS_SECONDS: the worker's exit ends it with what it has not sent."""
    sending = threading.Thread(target=traces.shutdown, name="last-spans", daemon=True)
    sending.start()
    await asyncio.to_thread(sending.join, _LAST_SPANS_SECONDS)


@contextmanager
def server_span(tracer: "Tracer", scope: Mapping[str, Any], *, method: str | None) -> "Iterator[Span]":
    """The span of one HTTP request, continuing the caller's trace when it sent a traceparent.
    `method` is the request's when the API knows it, else None: a client may send any token as a
    method, and OpenTelemetry's HTTP conventions name such a span HTTP and its method _OTHER, so that
    invented methods make neither span names nor attribute values without end."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    with tracer.start_as_current_span(
        method or _ANY_METHOD,
        context=_with_trace_state_bounded(extract(carrier)),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method or "_OTHER"},
    ) as span:
        yield span


def _with_trace_state_bounded(context: "Context") -> "Context":
    """The caller's context with its tracestate cut to W3C's 512 characters. The SDK keeps up to 32
    entries of hundreds of characters each, as any client sent them, and every span of the request
    carries them to the collector: kilobytes a span, stored for whoever sent them."""
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        TraceState,
        get_current_span,
        set_span_in_context,
    )

    sent = get_current_span(context).get_span_context()
    if not sent.trace_state or len(sent.trace_state.to_header()) <= _TRACE_STATE_CHARACTERS:
        return context
    kept: list[tuple[str, str]] = []
    length = -1  # no comma before the first entry
    for key, value in sent.trace_state.items():
        entry = len(key) + 1 + len(value)
        if entry > _LONG_ENTRY_CHARACTERS:
            continue
        length += 1 + entry
        if length > _TRACE_STATE_CHARACTERS:
            break
        kept.append((key, value))
    bounded = SpanContext(sent.trace_id, sent.span_id, sent.is_remote, sent.trace_flags, TraceState(kept))
    return set_span_in_context(NonRecordingSpan(bounded), context)


def finish_server_span(span: "Span", *, method: str | None, route: str | None, status: int) -> None:
    # A span the sampler dropped (a caller's traceparent that says not sampled, any client may send
    # one) records nothing and is a plain API span, with no name to read.
    if not span.is_recording():
        return
    span.set_attribute("http.response.status_code", status)
    # The route template, never the raw path: paths carry user ids. A path no route matches has none
    # (`route` None): OpenTelemetry's HTTP conventions then name the span by its method alone and set
    # no http.route.
    if route is None:
        span.update_name(method or _ANY_METHOD)
    else:
        span.update_name(f"{method or _ANY_METHOD} {route}")
        span.set_attribute("http.route", route)
    if status >= 500:
        # OpenTelemetry's HTTP conventions: a server span fails with a 5xx, the server's doing; a
        # 4xx is the client's, and leaves the status unset.
        from opentelemetry.trace import StatusCode

        span.set_status(StatusCode.ERROR)


def recorded_ids(span: "Span") -> tuple[str, str] | None:
    """The trace id and span id of `span`, in hex as a traceparent writes them, for its request's
    access line to name; None for a span the sampler dropped, which no collector will ever hold."""
    if not span.is_recording():
        return None
    from opentelemetry.trace import format_span_id, format_trace_id

    context = span.get_span_context()
    return format_trace_id(context.trace_id), format_span_id(context.span_id)


@contextmanager
def transaction_span(tracer: "Tracer", *, read_only: bool) -> "Iterator[None]":
    from opentelemetry.trace import SpanKind

    with tracer.start_as_current_span(
        "db.transaction",
        kind=SpanKind.CLIENT,
        attributes={"db.system.name": "postgresql", "db.transaction.read_only": read_only},
    ):
        yield
