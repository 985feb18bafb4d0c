/**
 * A typed client for todo-api: openapi-fetch over the types generated into schema.ts, plus what
 * every caller would otherwise write by hand: the bearer token (fetched afresh once on a 401),
 * If-Match on every write from the newest version seen of the task (lists and events included), and
 * creates that are safe to retry.
 *
 * Each method returns openapi-fetch's result: `{ data, response }` on success, or
 * `{ error, response }` with the problem document (RFC 9457) when the API (or something in front of
 * it) refused.
 */
import createClient from "openapi-fetch";
import type { components, operations, paths } from "./schema.js";
import { subscribe, type SubscribeOptions, type Subscription, type TaskEvent } from "./events.js";
import { isApiProblem, type Problem, type ProblemOf, type UnlistedProblem } from "./problems.js";
import { retryAfterMs } from "./retry_after.js";
import { answerUntilAborted, sleep } from "./abortable.js";
import { isTokenFailure, OTHER_USERS_PATH, tokenSource, type GetToken, type TokenSource } from "./token.js";

export { EventStreamError, EventStreamSilent } from "./events.js";
export type { SubscribeOptions, Subscription, TaskEvent } from "./events.js";
export type { GetToken } from "./token.js";
export type { Problem, ProblemOf, UnlistedProblem } from "./problems.js";

export type { components, operations, paths };
export type Task = components["schemas"]["TaskPublic"];
export type NewTask = components["schemas"]["TaskCreate"];
export type TaskChanges = components["schemas"]["TaskUpdate"];
export type ListQuery = NonNullable<operations["listTasks"]["parameters"]["query"]>;

export interface TodoClientOptions {
  /** The API's base URL: its origin, e.g. "https://api.example.com", or with the path it is served
   * under, e.g. "https://gateway.example.com/todo"; every request, the event stream's too, goes below it. */
  baseUrl: string;
  /** A JWT whose `sub` is the user; `fresh: true` when the API refused the last one (expired, re-keyed,
   * another user's: the account signed in before), asked once for every call refused with that token.
   * What it throws reaches the caller as thrown, and no request is sent (or sent again) after it. */
  getToken: GetToken;
  /** Instead of globalThis.fetch (tests, instrumentation); it gets each Request with its token set,
   * and the call's own signal as `init.signal` (`request.signal` follows it too): pass `init` on to
   * fetch, because Node's fetch can lose a Request's signal once garbage is collected. One that does
   * not still ends the call at the abort (its answer is not waited on), but leaves the request running. */
  fetch?: Fetch;
}

/**
 * What each method resolves to: openapi-fetch's result, narrowed on `error`. The error is the
 * problem document the API sent (RFC 9457), one of `P`: each method's is `ProblemOf` its operation,
 * so a `switch (error.type)` can cover every case.
 */
export type Result<T, P extends Problem = Problem> =
  | { data: T; error?: never; response: Response }
  | { data?: never; error: P; response: Response };

/** openapi-fetch's result with its error made a problem document: one the API did not send (the
 * server's own 431, a proxy's page) gets one from `problemOf`. */
type Settled<R extends { error?: unknown }> = R extends { error?: never }
  ? R
  : Omit<R, "error"> & { error: Extract<R["error"], Problem> | UnlistedProblem };

/** getTask with If-None-Match when the task is still that version: status 304 and no body. */
export type NotModified = { data?: never; error?: never; response: Response };

/** What every method takes. */
export interface CallOptions {
  /** Cancels the call: getToken's wait (the signal is handed to it too), the request, and a create's
   * wait before it is sent again. The call then rejects with the signal's reason, as fetch does. */
  signal?: AbortSignal;
}

/** For getTask: the ETag you hold, to be answered 304 rather than the task if it is still that version. */
export interface GetOptions extends CallOptions {
  ifNoneMatch?: string;
}

/** For a write: the ETag you hold. Left out, the newest one this client saw for the task is sent. */
export interface WriteOptions extends CallOptions {
  ifMatch?: string;
}

// A create that failed in transit, or got a 5xx or 409 idempotency-key-in-use (`sendAgain`), is
// sent this many times in all, waiting 200 ms, then 400 ms, or as long as the answer's Retry-After
// asks (503 isolation-unverified, say) up to CREATE_MAX_RETRY_AFTER_MS: a create asked to wait
// longer gets that answer at once, for the app to decide whether its user waits.
const CREATE_ATTEMPTS = 3;
const CREATE_RETRY_DELAY_MS = 200;
const CREATE_MAX_RETRY_AFTER_MS = 10_000;

/** The problem type of the API's 409 for a create whose Idempotency-Key other requests are using. */
const IDEMPOTENCY_KEY_IN_USE = "urn:todo-api:problem:idempotency-key-in-use";

/** The problem type of the API's 404 for a task that does not exist, or is not the caller's. */
const TASK_NOT_FOUND = "urn:todo-api:problem:not-found";

export type TodoClient = ReturnType<typeof createTodoClient>;

/** fetch as the client calls it: `init` carries only the call's signal. */
export type Fetch = (request: Request, init?: { signal?: AbortSignal }) => Promise<Response>;

export function createTodoClient({
  baseUrl,
  getToken,
  // Looked up at call time, so a fetch patched in later (tests, polyfills) is the one used.
  fetch = (request, init) => globalThis.fetch(request, init),
}: TodoClientOptions) {
  const tokens = tokenSource(getToken);
  const bearerFetch = withBearer(tokens, fetch);
  const client = createClient<paths>({ baseUrl, fetch: (request) => bearerFetch(request) });
  // Each method hands its call's signal to fetch itself: under garbage collection, Node's fetch
  // (undici) may lose the link from a caller's signal to the Request openapi-fetch made with it, and
  // to any copy of that Request, so that an abort never reached the request (nodejs/node#55428,
  // nodejs/undici#4068; the client test 'a call's signal cancels it after garbage is collected').
  const withSignal = (signal?: AbortSignal) => ({
    signal,
    fetch: (request: Request) => bearerFetch(request, signal),
  });

  // The newest version seen of each task (ids are unique across users), from every answer that
  // carries the task, lists and `subscribe`'s events included. Writes send its ETag as If-Match, so
  // a change made elsewhere since this client last saw the task is a 412, not silently overwritten,
  // and a write retried after its answer was lost is a 412 too (a toggle is not flipped back).
  const versions = new Map<number, number>();

  /** Notes a task's version unless a newer one was seen: answers and events can come out of order
   * (a stream resumed with Last-Event-ID replays versions this client has since written over). */
  function see(task: Task): void {
    if (task.version > (versions.get(task.id) ?? 0)) versions.set(task.id, task.version);
  }

  /**
   * Notes the version of every task a result carries (200, 201), forgets the task's once the API
   * says it is gone (204, or its 404 not-found), and passes the result on with its error a problem
   * document; throws for a 2xx that carries no task (`mustBeTasks`).
   */
  function settle<R extends { data?: Task | Task[]; error?: unknown; response: Response }>(
    result: R,
    taskId?: number,
  ): Settled<R> {
    if (result.response.ok && result.response.status !== 204) mustBeTasks(result.data, result.response);
    const error = result.response.ok ? undefined : problemOf(result.error, result.response);
    // Only the API's own 404 says the task is gone: one from something in front of it (a gateway's
    // page while it redeploys) says nothing of the task, and forgetting its version would send the
    // next write without If-Match, overwriting whatever changed meanwhile.
    const gone = result.response.status === 204 || error?.type === TASK_NOT_FOUND;
    if (taskId !== undefined && gone) versions.delete(taskId);
    for (const task of result.data === undefined ? [] : [result.data].flat()) see(task);
    return (error === undefined ? result : { ...result, error }) as Settled<R>;
  }

  function taskParams(userId: string, taskId: number, ifMatch?: string) {
    const version = versions.get(taskId);
    return {
      path: { user_id: userId, task_id: taskId },
      header: { "If-Match": ifMatch ?? (version === undefined ? undefined : etagOf({ id: taskId, version })) },
    };
  }

  /**
   * One task. With `ifNoneMatch` and the task still that version: status 304, no data, nothing to
   * parse; a result typed so only where `ifNoneMatch` may be given (a 304 nobody asked for is an error).
   */
  function getTask(
    userId: string,
    taskId: number,
    options: GetOptions & { ifNoneMatch: string },
  ): Promise<Result<Task, ProblemOf<"getTask">> | NotModified>;
  function getTask(
    userId: string,
    taskId: number,
    options?: CallOptions & { ifNoneMatch?: undefined },
  ): Promise<Result<Task, ProblemOf<"getTask">>>;
  function getTask(
    userId: string,
    taskId: number,
    options?: GetOptions,
  ): Promise<Result<Task, ProblemOf<"getTask">> | NotModified>;
  async function getTask(
    userId: string,
    taskId: number,
    { ifNoneMatch, signal }: GetOptions = {},
  ): Promise<Result<Task, ProblemOf<"getTask">> | NotModified> {
    const result = await client.GET("/api/{user_id}/tasks/{task_id}", {
      params: { path: { user_id: userId, task_id: taskId }, header: { "If-None-Match": ifNoneMatch } },
      ...withSignal(signal),
    });
    if (result.response.status === 304 && ifNoneMatch !== undefined) return { response: result.response };
    return settle(result, taskId);
  }

  return {
    /** openapi-fetch itself, for anything the methods below do not cover (health checks, middleware). */
    raw: client,

    /**
     * Live changes to the user's tasks (src/events.ts): `onEvent` gets `reset` once the stream is
     * live (fetch the list then) and whenever the list must be fetched again, and each created,
     * updated and deleted task in order. Reconnects by itself. While a promise `onEvent` returns
     * (a reset's refetch) is pending, the events that come meanwhile wait for it.
     * Like any answer, an event's task is remembered: the next write sends its version as If-Match.
     */
    subscribe(userId: string, onEvent: (event: TaskEvent) => unknown, options?: SubscribeOptions): Subscription {
      // A tab that applies events to its list shows their versions, so its next write must send
      // them as If-Match: the version it listed is stale once another tab has changed the task.
      const rememberEvent = (event: TaskEvent) => {
        if (event.type === "task.deleted") versions.delete(event.taskId);
        else if (event.type !== "reset") see(event.task);
        return onEvent(event);
      };
      return subscribe({ baseUrl, tokens, fetch }, userId, rememberEvent, options);
    },

    /**
     * One page of the user's tasks. `next` is the query for the following page (the `Link`
     * header's cursor), undefined on the last one: list again with it until it is undefined.
     */
    async listTasks(
      userId: string,
      query: ListQuery = {},
      { signal }: CallOptions = {},
    ): Promise<Result<Task[], ProblemOf<"listTasks">> & { next?: ListQuery }> {
      const result = settle(
        await client.GET("/api/{user_id}/tasks", {
          params: { path: { user_id: userId }, query },
          ...withSignal(signal),
        }),
      );
      // The Link repeats the query it answers with a new cursor, so the next page is this query
      // with that cursor; only the cursor is read from it, which keeps `next` typed.
      const cursor = nextCursor(result.response.headers.get("Link"));
      const next: ListQuery | undefined = cursor === undefined ? undefined : { ...query, cursor };
      return { ...result, next };
    },

    /**
     * Creates a task, safely retried: every attempt carries the same Idempotency-Key (a new UUID
     * unless you pass one), so an attempt that reached the server before the connection dropped is
     * answered with the task it made, as it is now (`Idempotent-Replayed: true`), instead of
     * creating a second task; 410 task-deleted when that task has been deleted since.
     */
    async createTask(
      userId: string,
      task: NewTask,
      { idempotencyKey = crypto.randomUUID(), signal }: { idempotencyKey?: string } & CallOptions = {},
    ): Promise<Result<Task, ProblemOf<"createTask">>> {
      for (let attempt = 1; ; attempt++) {
        // What sending the request rejected with: what fails before it is made is the caller's
        // input, and what fails once it is answered (a 2xx that is not the API's JSON) is no drop.
        let failedToSend: unknown;
        try {
          const result = await client.POST("/api/{user_id}/tasks", {
            params: { path: { user_id: userId }, header: { "Idempotency-Key": idempotencyKey } },
            body: task,
            signal,
            fetch: (request) =>
              bearerFetch(request, signal).catch((error: unknown) => {
                failedToSend = error;
                throw error;
              }),
          });
          if (!sendAgain(result.response, result.error) || attempt === CREATE_ATTEMPTS) return settle(result);
          const wait = retryAfterMs(result.response) ?? CREATE_RETRY_DELAY_MS * attempt;
          if (wait > CREATE_MAX_RETRY_AFTER_MS) return settle(result);
          await sleep(wait, signal);
        } catch (error) {
          // fetch rejects with a TypeError when the connection failed or dropped (Fetch standard):
          // the create may or may not have happened. No other TypeError is a reason to send it
          // again: one before the request was made (a key no header can carry, a body JSON cannot
          // hold), one reading an answer, or getToken's own; nor is an abort, whatever its reason.
          const dropped =
            error === failedToSend && error instanceof TypeError && !isTokenFailure(error) && !signal?.aborted;
          if (!dropped || attempt === CREATE_ATTEMPTS) throw error;
          await sleep(CREATE_RETRY_DELAY_MS * attempt, signal);
        }
      }
    },

    getTask,

    /** Changes the fields given (`description: null` clears it); 412 if the task changed meanwhile. */
    async updateTask(
      userId: string,
      taskId: number,
      changes: TaskChanges,
      { ifMatch, signal }: WriteOptions = {},
    ): Promise<Result<Task, ProblemOf<"updateTask">>> {
      return settle(
        await client.PUT("/api/{user_id}/tasks/{task_id}", {
          params: taskParams(userId, taskId, ifMatch),
          body: changes,
          ...withSignal(signal),
        }),
        taskId,
      );
    },

    /** Sets `completed`, or toggles it when `completed` is left out. */
    async setTaskCompletion(
      userId: string,
      taskId: number,
      completed?: boolean,
      { ifMatch, signal }: WriteOptions = {},
    ): Promise<Result<Task, ProblemOf<"setTaskCompletion">>> {
      return settle(
        await client.PATCH("/api/{user_id}/tasks/{task_id}/complete", {
          params: taskParams(userId, taskId, ifMatch),
          body: completed === undefined ? undefined : { completed },
          ...withSignal(signal),
        }),
        taskId,
      );
    },

    /** Deletes the task: 204, or 412 if it changed since the ETag sent. */
    async deleteTask(
      userId: string,
      taskId: number,
      { ifMatch, signal }: WriteOptions = {},
    ): Promise<Result<undefined, ProblemOf<"deleteTask">>> {
      return settle(
        await client.DELETE("/api/{user_id}/tasks/{task_id}", {
          params: taskParams(userId, taskId, ifMatch),
          ...withSignal(signal),
        }),
        taskId,
      );
    },
  };
}

/**
 * Sends each request with a bearer token; on a 401, or the API's 403 for another user's path (the
 * last token may be the account signed in before), sends it once more with a fresh token (the one
 * every call refused that token shares: `tokenSource`).
 * This is openapi-fetch's fetch rather than a middleware because the retry must send the body
 * again, and only a layer that holds the Request before it goes out can keep a copy of it.
 */
function withBearer(
  tokens: TokenSource,
  send: Fetch,
): (request: Request, signal?: AbortSignal) => Promise<Response> {
  return async (request, signal) => {
    const attempt = async (refused?: string) => {
      // Sending a body uses it up, so each attempt sends a copy; one that follows the call's own
      // signal, as a clone's may stop doing once garbage is collected (see createTodoClient).
      const copy = new Request(request.clone(), signal && { signal });
      const token = await tokens(refused, signal ?? request.signal);
      copy.headers.set("Authorization", `Bearer ${token}`);
      return { token, response: await answerUntilAborted(send(copy, signal && { signal }), signal) };
    };
    const first = await attempt();
    if (first.response.status !== 401 && !(await namesAnotherUser(first.response))) return first.response;
    await first.response.body?.cancel(); // free the connection rather than wait for garbage collection
    return (await attempt(first.token)).response;
  };
}

/** Whether an answer is the API's 403 for a path of another user than the token's. */
async function namesAnotherUser(response: Response): Promise<boolean> {
  if (response.status !== 403 || !response.headers.get("Content-Type")?.includes("json")) return false;
  // A copy is read, so that the answer, when it is the one returned, still has its body.
  const problem: unknown = await response.clone().json().catch(() => undefined);
  return (problem as Partial<Problem> | undefined)?.type === OTHER_USERS_PATH;
}

/**
 * Throws unless a 2xx answer's body is the API's: a task, or a page of them. Something in front of
 * the API may answer 200 in its place (a captive portal's page, which openapi-fetch's parse already
 * throws a SyntaxError for; a `null` body, which it does not), and a method's `data` is never what
 * its type does not say.
 */
function mustBeTasks(data: unknown, response: Response): void {
  const tasks: unknown[] = Array.isArray(data) ? data : [data];
  if (tasks.every(isTask)) return;
  const what = data === undefined ? "no body" : JSON.stringify(data).slice(0, 200);
  throw new SyntaxError(`the ${response.status} answer from ${response.url} is not the API's JSON: ${what}`);
}

function isTask(value: unknown): value is Task {
  const task = value as Partial<Task> | null;
  return typeof task === "object" && task !== null && typeof task.id === "number" && typeof task.version === "number";
}

/** A task's ETag, as the API makes it from the task's version (`"<id>.<version>"`). */
export function etagOf(task: Pick<Task, "id" | "version">): string {
  return `"${task.id}.${task.version}"`;
}

/** The cursor in a `Link: </api/u/tasks?...&cursor=...>; rel="next"` header, if there is one. */
function nextCursor(link: string | null): string | undefined {
  const target = link?.match(/<([^>]*)>\s*;\s*rel="?next"?/)?.[1];
  if (target === undefined) return undefined;
  // The target is relative to the API; any base will do to read its query.
  return new URL(target, "http://api").searchParams.get("cursor") ?? undefined;
}

/**
 * The error openapi-fetch read from a non-2xx answer if it is the API's problem document; otherwise
 * (its text, undefined for an empty body, or some other JSON, another server's problem document
 * included) one made from the status, so `error` is always what its type says.
 */
function problemOf(error: unknown, response: Response): Problem {
  if (isApiProblem(error)) return error;
  const title = response.statusText || `HTTP ${response.status}`;
  const text = typeof error === "string" ? error : error === undefined ? "" : JSON.stringify(error);
  return { type: "about:blank", title, status: response.status, detail: text || title };
}

/** Whether a create's answer asks for the same request again: a 5xx (the create may not have been
 * made), or the API's 409 idempotency-key-in-use, which created nothing and says to send it again
 * after its Retry-After (requests with the same key were being handled; this client's own retry of
 * an attempt still running on the server is one). Any other 4xx is the answer. */
function sendAgain(response: Response, error: unknown): boolean {
  if (response.status >= 500) return true;
  return response.status === 409 && (error as Partial<Problem> | undefined)?.type === IDEMPOTENCY_KEY_IN_USE;
}
