/**
 * Live changes: `GET /api/{user_id}/events` (Server-Sent Events) streamed with fetch, because a
 * browser's EventSource cannot send the Authorization header (and the token never goes in the URL).
 * eventsource-parser reads the wire format; this file only connects, reconnects and resumes.
 *
 * - Every connection sends a token from `getToken`. A fresh one is asked for only when the token was
 *   refused (401, a fresh one refused too going to `onError`; or the API's 403 for another user's
 *   path, which a token of the account signed in before gets) or the stream ended at the token's
 *   `exp` (the server ends it then): not after a network error or a server that shut down, so an
 *   outage costs the app's auth server nothing.
 * - Reconnects wait with exponential backoff (or the server's Retry-After, up to an hour) and resume with
 *   Last-Event-ID, so the list misses nothing and nothing comes twice (of a task deleted meanwhile,
 *   its deletion alone: the API clears a deleted task from its earlier events). The backoff starts
 *   over only once a stream has delivered an event or a heartbeat, not on every 200.
 * - A refusal that asking again cannot change (403 with a fresh token: the user id is not the
 *   token's; any 4xx but 401, 408 and 429; an answer that is not an event stream) ends the
 *   subscription: it goes to `onError` and `ended`, and nothing is retried.
 * - `reset` means "refetch the list": the client says it once a stream without an id to resume from
 *   is live (the first, unless `lastEventId` was given, and one whose predecessor was cut before even
 *   its opening `id:` came), so a list fetched then misses nothing; the server when the id is too old
 *   to resume from or when events a stream had not sent yet were purged; and the client again in
 *   place of an event whose data it cannot read.
 * - An `onEvent` that returns a promise (a reset's refetch) holds the events that come meanwhile:
 *   they are handed on, in order, once it settles, so they apply to the list it fetched.
 * - What `onEvent` throws is the app's own bug, not the stream's: it goes to `onError` as thrown
 *   (without one, to console.error) and the stream goes on with the next event, as an EventTarget
 *   goes on after a listener throws. It is neither a reason to reconnect nor a failed connection.
 */
import { createParser, type EventSourceMessage } from "eventsource-parser";
import { removeTrailingSlash } from "openapi-fetch";
import type { components } from "./schema.js";
import { isApiProblem, type ProblemOf } from "./problems.js";
import { retryAfterMs } from "./retry_after.js";
import { answerUntilAborted, sleep } from "./abortable.js";
import { isTokenFailure, OTHER_USERS_PATH, type TokenSource } from "./token.js";
import type { Fetch } from "./index.js";

type Task = components["schemas"]["TaskPublic"];
type StreamProblem = ProblemOf<"streamEvents">;

export type TaskEvent =
  | { type: "task.created"; id: string; task: Task }
  | { type: "task.updated"; id: string; task: Task }
  | { type: "task.deleted"; id: string; taskId: number }
  /**
   * Refetch the list, then carry on: the stream is live and every change from now on comes as an
   * event (the first stream, unless you passed `lastEventId`), or the events since your last one
   * cannot be replayed.
   */
  | { type: "reset" };

export interface SubscribeOptions {
  /** Stops the subscription (as `close()` does). */
  signal?: AbortSignal;
  /** Resume after this event id (one you saw earlier) instead of starting from now. */
  lastEventId?: string;
  /**
   * Told of each failed connection before the next attempt (network down, 5xx, 429...), of the
   * refusal that ends the subscription (an EventStreamError, as in `ended`), of an event whose data
   * could not be read (a reset comes in its place), and of what `onEvent` throws, as thrown.
   */
  onError?: (error: unknown) => void;
  /**
   * A stream that says nothing this long (no event, no heartbeat) is taken for dead, reported as an
   * EventStreamSilent and opened again from the last id. Default 45 000: three of the API's default
   * heartbeats (`EVENTS_HEARTBEAT_SECONDS`, 15); make it more than three of the API's own.
   */
  silenceMs?: number;
}

/** A stream said nothing for `silenceMs`: a network that stopped carrying anything without closing
 * the connection (a laptop that changed networks, a NAT that forgot it). It is opened again. */
export class EventStreamSilent extends Error {
  readonly silenceMs: number;

  constructor(silenceMs: number) {
    super(`the event stream said nothing for ${silenceMs} ms, not even a heartbeat: opened again`);
    this.name = "EventStreamSilent";
    this.silenceMs = silenceMs;
  }
}

/** The API answered a connection with this status instead of the stream. */
export class EventStreamError extends Error {
  readonly status: number;
  /** The problem document (RFC 9457) the API sent, if it sent one: one of the types the stream's
   * answers list, for a `switch` to cover. */
  readonly problem: StreamProblem | undefined;

  /** `detail` says what went wrong when the answer carries no problem that does. */
  constructor(status: number, problem: StreamProblem | undefined, detail = problem?.detail) {
    super(`the event stream answered ${status}${detail ? `: ${detail}` : ""}`);
    this.name = "EventStreamError";
    this.status = status;
    this.problem = problem;
  }
}

export interface Subscription {
  /** Stops the stream for good; resolves once it has stopped. */
  close(): Promise<void>;
  /** The last id the stream named (an event's, or the bare `id:` it opens with), for a later `lastEventId`;
   * during a reset, where the list fetched then starts (undefined only before any stream went live). */
  readonly lastEventId: string | undefined;
  /**
   * Resolves once the subscription has stopped for good: with undefined after `close()` or the
   * signal, or with the refusal that ended it (403: `userId` is not the token's user).
   */
  readonly ended: Promise<EventStreamError | undefined>;
}

export interface EventsConnection {
  baseUrl: string;
  /** The client's getToken, its fresh tokens shared with its requests (src/token.ts). */
  tokens: TokenSource;
  fetch: Fetch;
}

type Outcome =
  | { kind: "ended"; tokenExpired: boolean }
  | { kind: "unauthorized"; error: EventStreamError }
  | { kind: "refused"; retryAfterMs?: number }
  | { kind: "rejected"; error: EventStreamError };

const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 15_000;
// The longest Retry-After a reconnect waits: the API asks for up to an hour (503 isolation-unverified
// under the longest ISOLATION_CHECK_INTERVAL_SECONDS). A longer one waits that long: a timer of more
// than 2^31 - 1 ms would fire at once, reconnecting in a tight loop.
const MAX_RETRY_AFTER_MS = 3_600_000;
// Three of the API's default heartbeats (EVENTS_HEARTBEAT_SECONDS, 15 s).
const SILENCE_MS = 45_000;

export function subscribe(
  { baseUrl, tokens, fetch }: EventsConnection,
  userId: string,
  onEvent: (event: TaskEvent) => unknown,
  { signal, lastEventId, onError, silenceMs = SILENCE_MS }: SubscribeOptions = {},
): Subscription {
  const stopping = new AbortController();
  const stop = () => stopping.abort();
  // A signal aborted already never fires "abort" again: without this, the stream would open anyway.
  if (signal?.aborted) stop();
  else signal?.addEventListener("abort", stop, { once: true });
  // Appended to the base as openapi-fetch appends the task routes, so a base with a path (an API
  // served under a gateway's /todo) keeps it: `new URL("/api/...", base)` would drop it.
  const url = `${removeTrailingSlash(baseUrl)}/api/${encodeURIComponent(userId)}/events`;
  let last = lastEventId;

  /** What `onEvent` threw, or its promise rejected with: the app's own bug, reported. */
  function report(error: unknown): void {
    if (onError) onError(error);
    else console.error("todo-api subscribe: onEvent threw", error);
  }

  /** Hands an event to `onEvent`; what it throws is reported, and the stream goes on. Once closed,
   * nothing more is handed on: an `onEvent` that closes the subscription would otherwise still get
   * the events read with its own (a replay comes in one piece), as EventSource never does.
   * Returns the promise `onEvent` returned, if it did, settled once that one has. */
  function handOn(event: TaskEvent): Promise<void> | undefined {
    if (stopping.signal.aborted) return undefined;
    try {
      const result = onEvent(event);
      if (isPromiseLike(result)) return Promise.resolve(result).then(() => {}, report);
    } catch (error) {
      report(error);
    }
    return undefined;
  }

  // While a promise `onEvent` returned is pending (a reset's refetch of the list), the events that
  // come meanwhile wait for it, in order: handed on at once, they would be applied to the list being
  // replaced, and lost with it when the list, read before them, came in (a task made then never
  // shown, one deleted then shown for good).
  let pending: Promise<void> | undefined;

  function emit(event: TaskEvent): void {
    const handed = pending ? pending.then(() => handOn(event)) : handOn(event);
    if (handed === undefined) return;
    pending = handed;
    void handed.then(() => {
      if (pending === handed) pending = undefined;
    });
  }

  function deliver(message: EventSourceMessage): void {
    if (stopping.signal.aborted) return;
    let event: TaskEvent | undefined;
    try {
      event = taskEvent(message);
    } catch (error) {
      // Data this client cannot read (a proxy mangled it, or a server bug): the event is lost, and
      // its id already noted, so the list is refetched instead, as the server itself asks when it
      // cannot render an event.
      onError?.(error);
      event = { type: "reset" };
    }
    if (event) emit(event);
  }

  // Failed attempts since a stream last delivered something past its opening `id:` (an event or a
  // heartbeat comment). Not since the last 200: a server that opens the stream and then cuts it
  // (or ends it) at once would otherwise be asked again every half second or so, forever.
  let failures = 0;

  // The token the last connection sent: the one a fresh token replaces when the API refused it.
  let sent: string | undefined;

  /** One connection, read to its end: "ended" when the server closed a stream it had opened.
   * `refused`: the token the API refused, for a fresh one; undefined for the token getToken keeps. */
  async function connectOnce(refused: string | undefined): Promise<Outcome> {
    const fresh = refused !== undefined;
    const token = await tokens(refused, stopping.signal);
    sent = token;
    const headers = new Headers({ Accept: "text/event-stream", Authorization: `Bearer ${token}` });
    const resumeFrom = last;
    if (resumeFrom !== undefined) headers.set("Last-Event-ID", resumeFrom);
    // The signal goes to fetch itself too, and the answer is not waited on past it: a Request's own
    // may be lost once garbage is collected (see createTodoClient), by a fetch passed in that drops
    // `init` too, and close() would then wait on a stream nothing ends.
    // Silent from the request on, too: a connection accepted that never answers (a network that
    // stopped carrying it) waited for fetch's own timeout, which browsers do not have (the streams
    // verification probe of stop 81). Given up after silenceMs, it is aborted and opened again.
    const unanswered = new AbortController();
    const giveUp = setTimeout(() => unanswered.abort(new EventStreamSilent(silenceMs)), silenceMs);
    const stopWaiting = () => unanswered.abort(stopping.signal.reason);
    stopping.signal.addEventListener("abort", stopWaiting, { once: true });
    if (stopping.signal.aborted) stopWaiting();
    let response: Response;
    try {
      const request = new Request(url, { headers, signal: unanswered.signal });
      response = await answerUntilAborted(fetch(request, { signal: unanswered.signal }), unanswered.signal);
    } finally {
      clearTimeout(giveUp);
      stopping.signal.removeEventListener("abort", stopWaiting);
    }
    if (response.status === 401 || !response.ok || !response.body) {
      const error = new EventStreamError(response.status, await problemIn(response));
      // A 401 refuses the token; the API's 403 may be that of the account signed in before, once: a
      // fresh token's 403 is a path of another user, which ends the subscription below.
      const previousAccount = !fresh && error.problem?.type === OTHER_USERS_PATH;
      if (response.status === 401 || previousAccount) return { kind: "unauthorized", error };
      onError?.(error);
      if (isFinal(response.status)) return { kind: "rejected", error };
      // No wait at all (0, a date gone by) is no answer either: reconnecting at once, again and again,
      // is what the backoff is for.
      const retryAfter = retryAfterMs(response);
      return { kind: "refused", retryAfterMs: retryAfter ? Math.min(retryAfter, MAX_RETRY_AFTER_MS) : undefined };
    }
    const type = response.headers.get("Content-Type");
    if (!isEventStream(type)) {
      // Not the API's stream but a page (a baseUrl that reaches the app itself, or a gateway's own
      // answer): read as one, it would pass for a live stream that never speaks, a reset on every
      // reconnect and nothing reported. EventSource fails such a connection for good (WHATWG HTML).
      await response.body.cancel();
      const detail = `${type ?? "no Content-Type"}, not an event stream`;
      const error = new EventStreamError(response.status, undefined, detail);
      onError?.(error);
      return { kind: "rejected", error };
    }
    // Without an id to resume from, what happened before (the list the app fetched or will fetch,
    // or what changed while disconnected) is unknown: refetch, now that the stream is live (the
    // server read where it starts before answering), so that everything after the refetch arrives
    // as events and nothing can fall between the two. Said once the stream has named where it
    // starts, so that `lastEventId` names it during the reset, as during one the server sends (its
    // `id:` and `event: reset` come in one block): an app that keeps the id it saw then resumes
    // from the list it refetched, rather than from nothing, which is one more reset.
    let resetToSay = resumeFrom === undefined;
    const goneLive = () => {
      if (resetToSay) (resetToSay = false), emit({ type: "reset" });
    };
    // A block's `id:` is the last event id even without data (WHATWG SSE, "dispatch the event"), and
    // the stream opens with such a block: where it starts, all an idle stream has to resume from.
    // onId hears of it, and of an event's id before onEvent does.
    const parser = createParser({
      onId: (id) => {
        // Once closed, events are no longer handed on: resuming from one's id would skip it.
        if (!stopping.signal.aborted) last = id;
        goneLive();
      },
      onEvent: (message) => ((failures = 0), goneLive(), deliver(message)),
      onComment: () => ((failures = 0), goneLive()),
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    // close() ends the read itself, for a body that no longer follows the signal (as above): the
    // server's heartbeats would otherwise keep it going for good.
    const stopReading = () => void reader.cancel().catch(() => {});
    stopping.signal.addEventListener("abort", stopReading, { once: true });
    if (stopping.signal.aborted) stopReading();
    // A connection the network stopped carrying without closing it would be read from for good (the
    // browser probe of stop 81: a page left stale for minutes, with nothing said): the API's
    // heartbeats mean a live stream is never silent for long.
    let silent = false;
    let silence: ReturnType<typeof setTimeout> | undefined;
    try {
      for (;;) {
        clearTimeout(silence);
        silence = setTimeout(() => ((silent = true), stopReading()), silenceMs);
        const { value, done } = await reader.read();
        if (done && silent && !stopping.signal.aborted) throw new EventStreamSilent(silenceMs);
        if (done) return { kind: "ended", tokenExpired: hasExpired(token) };
        parser.feed(value);
      }
    } finally {
      clearTimeout(silence);
      stopping.signal.removeEventListener("abort", stopReading);
      // However the reading stops (an onError that throws, say), the connection is closed: left
      // open, it would hold one of the user's streams on the server until its send timeout.
      await reader.cancel().catch(() => {});
    }
  }

  /** The wait before the next attempt, cut short by close(): the loop then ends. */
  const pause = (ms: number) => sleep(ms, stopping.signal).catch(() => {});

  const running = (async (): Promise<EventStreamError | undefined> => {
    let refused: string | undefined;
    while (!stopping.signal.aborted) {
      let outcome: Outcome;
      try {
        outcome = await connectOnce(refused);
      } catch (error) {
        if (stopping.signal.aborted) break;
        onError?.(error); // the network failed, the connection dropped mid-stream, or getToken threw
        // The network says nothing against the token: a fresh one would change nothing. A getToken
        // that failed to give a fresh one (signed out meanwhile) is asked for a fresh one again:
        // the token it kept is the one the API refused.
        if (!isTokenFailure(error)) refused = undefined;
        await pause(backoff(failures++));
        continue;
      }
      if (outcome.kind === "rejected") {
        return outcome.error;
      } else if (outcome.kind === "unauthorized") {
        // A fresh token refused too will not be accepted by asking again at once, and the app
        // should hear of it: getToken may be handing out a token this API cannot accept.
        if (refused !== undefined) {
          onError?.(outcome.error);
          await pause(backoff(failures++));
        }
      } else if (outcome.kind === "refused") {
        await pause(outcome.retryAfterMs ?? backoff(failures++));
      } else {
        // The server ended the stream: the token expired, or the server is shutting down. One that
        // ended before delivering anything counts as a failure.
        await pause(backoff(failures++));
      }
      // A 401 refused the token; a stream ended at its `exp` would be refused next. Anything else
      // (a 429, a 5xx, a server shutting down) says nothing against the token.
      const refusedNow = outcome.kind === "unauthorized" || (outcome.kind === "ended" && outcome.tokenExpired);
      refused = refusedNow ? sent : undefined;
    }
    return undefined;
  })();
  // A page's signal may outlive many subscriptions (one per mount, say): once this one has ended,
  // a listener left on it would keep the subscription, onEvent and all it holds, for the signal's life.
  // (Not `finally`: its promise would reject again, unhandled, if `running` ever did.)
  const forget = () => signal?.removeEventListener("abort", stop);
  running.then(forget, forget);

  return {
    async close() {
      stopping.abort();
      await running;
    },
    get lastEventId() {
      return last;
    },
    ended: running,
  };
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | undefined)?.then === "function";
}

/** The event a message carries; undefined for one from a newer server, which is not for this client. */
function taskEvent(message: EventSourceMessage): TaskEvent | undefined {
  const id = message.id ?? "";
  switch (message.event) {
    case "task.created":
    case "task.updated":
      return { type: message.event, id, task: JSON.parse(message.data) as Task };
    case "task.deleted":
      return { type: "task.deleted", id, taskId: (JSON.parse(message.data) as { id: number }).id };
    case "reset":
      return { type: "reset" };
  }
  return undefined;
}

/**
 * Whether the token's `exp` has passed, read without verifying it (the API does that). A token
 * without a readable one counts as unexpired: if the API refuses it, its 401 asks for a fresh one.
 */
function hasExpired(token: string): boolean {
  try {
    const payload = token.split(".")[1] ?? "";
    const { exp } = JSON.parse(atob(payload.replace(/-/g, "+").replace(/_/g, "/"))) as { exp?: unknown };
    return typeof exp === "number" && exp * 1000 <= Date.now();
  } catch {
    return false;
  }
}

/**
 * Whether asking again can only get the same answer. A 4xx says the request itself is wrong (403:
 * another user's id), except 401 (a fresh token may be accepted), 408 and 429 (later may do).
 */
function isFinal(status: number): boolean {
  return status >= 400 && status < 500 && ![401, 408, 429].includes(status);
}

/** Whether a Content-Type names an event stream, whatever parameters (a charset) follow. */
function isEventStream(contentType: string | null): boolean {
  return contentType?.split(";")[0]?.trim().toLowerCase() === "text/event-stream";
}

/** The problem document a refusal carries, if any. Its body is read or cancelled either way. */
async function problemIn(response: Response): Promise<StreamProblem | undefined> {
  if (!response.headers.get("Content-Type")?.includes("json")) {
    await response.body?.cancel(); // free the connection rather than wait for garbage collection
    return undefined;
  }
  try {
    const body: unknown = await response.json();
    // Another server's JSON (a gateway's own problem document) is no problem of the API's.
    return isApiProblem(body) ? (body as StreamProblem) : undefined;
  } catch {
    return undefined; // cut short, or not JSON after all: the status says enough
  }
}

/** Exponential with full jitter, so that the tabs of a restarted server do not all come back at once. */
function backoff(failures: number): number {
  return Math.random() * Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** failures);
}
