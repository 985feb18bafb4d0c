/**
 * `subscribe` against a live API (tests/test_typescript_client.py starts it and mints the users).
 * This file takes its users from the end of TODO_API_USERS, client.test.ts from the start
 * (live_api.ts): no two tests ever share a user, or a stream.
 */
import assert from "node:assert/strict";
import { test } from "node:test";

import { createTodoClient, EventStreamError, type Subscription, type TaskEvent } from "../src/index.js";
import { baseUrl, clientFor, takeUser } from "./live_api.js";

/** Collects events, and waits until `count` have come. */
function collector() {
  const events: TaskEvent[] = [];
  let wake = () => {};
  return {
    events,
    onEvent(event: TaskEvent) {
      events.push(event);
      wake();
    },
    async until(count: number, timeoutMs = 10_000): Promise<TaskEvent[]> {
      const deadline = Date.now() + timeoutMs;
      while (events.length < count) {
        if (Date.now() > deadline) assert.fail(`only ${events.length} of ${count} events came`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, 100);
        });
      }
      return events.slice(0, count);
    },
  };
}

/** Resolves once the stream is open: a stream starts from now, so write only after. */
function opened(fetch: (request: Request) => Promise<Response> = (request) => globalThis.fetch(request)) {
  let open = () => {};
  const isOpen = new Promise<void>((resolve) => (open = resolve));
  const watching = async (request: Request) => {
    const response = await fetch(request);
    if (request.url.endsWith("/events") && response.ok) open();
    return response;
  };
  return { isOpen, fetch: watching };
}

test("subscribe delivers created, updated and deleted tasks, each as the API returned it", async () => {
  const user = takeUser("end");
  const todo = clientFor(user);
  const seen = collector();
  const watch = opened();
  const subscription = clientFor(user, { fetch: watch.fetch }).subscribe(user.id, seen.onEvent);
  await watch.isOpen;

  const { data: created } = await todo.createTask(user.id, { title: "Live" });
  assert.ok(created);
  const { data: updated } = await todo.updateTask(user.id, created.id, { title: "Live, renamed" });
  assert.ok(updated);
  await todo.deleteTask(user.id, created.id);
  const events = await seen.until(3);
  await subscription.close();

  assert.deepEqual(
    events.map((event) => ({ ...event, id: undefined })),
    [
      { type: "task.created", id: undefined, task: created },
      { type: "task.updated", id: undefined, task: updated },
      { type: "task.deleted", id: undefined, taskId: created.id },
    ],
  );
  assert.equal(subscription.lastEventId, (events[2] as { id: string }).id);
});

test("a tab that applies events writes from the version they carried, not a 412", async () => {
  const user = takeUser("end");
  const elsewhere = clientFor(user); // another tab
  const watch = opened();
  const mine = clientFor(user, { fetch: watch.fetch });
  const { data: task } = await elsewhere.createTask(user.id, { title: "Shared" });
  assert.ok(task);
  // The README's live list: list, then apply each event to it.
  await mine.listTasks(user.id);
  const seen = collector();
  const subscription = mine.subscribe(user.id, seen.onEvent);
  await watch.isOpen;
  const toggled = await elsewhere.setTaskCompletion(user.id, task.id);
  assert.equal(toggled.data?.version, 2);
  const [event] = await seen.until(1);
  assert.deepEqual(event, { type: "task.updated", id: (event as { id: string }).id, task: toggled.data });

  // What the list now shows (completed, version 2) is what this tab changes.
  const undone = await mine.setTaskCompletion(user.id, task.id, false);
  await subscription.close();

  assert.equal(undone.response.status, 200, JSON.stringify(undone.error));
  assert.deepEqual([undone.data?.completed, undone.data?.version], [false, 3]);
  const stored = await elsewhere.getTask(user.id, task.id);
  assert.deepEqual([stored.data?.completed, stored.data?.version], [false, 3]);
});

test("a dropped stream reconnects with a fresh token and Last-Event-ID, missing nothing", async () => {
  const user = takeUser("end");
  const todo = clientFor(user);
  const seen = collector();
  const asked: boolean[] = [];
  const sentIds: (string | null)[] = [];
  let cut: AbortController | undefined;
  const watch = opened(async (request) => {
    sentIds.push(request.headers.get("Last-Event-ID"));
    if (cut) return fetch(request);
    // The first stream opened can be cut from here, as a network drop would.
    const controller = new AbortController();
    const response = await fetch(new Request(request, { signal: controller.signal }));
    if (response.ok) cut = controller;
    return response;
  });
  const subscription = createTodoClient({
    baseUrl,
    // The first token is refused (expired): the client must ask for a fresh one.
    getToken: async ({ fresh }) => {
      asked.push(fresh);
      return fresh ? user.token : user.expiredToken;
    },
    fetch: watch.fetch,
  }).subscribe(user.id, seen.onEvent);
  await watch.isOpen;

  const { data: first } = await todo.createTask(user.id, { title: "Before the drop" });
  assert.ok(first);
  const [before] = await seen.until(1);
  cut?.abort();
  const missed = [];
  for (const title of ["During 1", "During 2", "During 3"]) {
    const { data } = await todo.createTask(user.id, { title });
    missed.push(data);
  }
  const events = await seen.until(4);
  await subscription.close();

  assert.deepEqual(asked.slice(0, 2), [false, true], "a 401 asks for a fresh token");
  assert.deepEqual(
    events.map((event) => (event.type === "task.created" ? event.task : event)),
    [first, ...missed],
    "every write once, in order, across the drop",
  );
  assert.equal(sentIds.at(-1), (before as { id: string }).id, "resumed after the last event seen");
});

test("a Last-Event-ID the server no longer keeps comes back as reset", async () => {
  const user = takeUser("end");
  const seen = collector();
  const subscription = clientFor(user).subscribe(user.id, seen.onEvent, { lastEventId: "not-an-id" });

  const [event] = await seen.until(1);
  await subscription.close();

  assert.deepEqual(event, { type: "reset" });
});

test("another user's stream is a 403 that ends the subscription: reported once, never asked again", async () => {
  const user = takeUser("end");
  const other = takeUser("end");
  const errors: unknown[] = [];
  let attempts = 0;
  let askAgain = () => {};
  const askedAgain = new Promise<"asked again">((resolve) => (askAgain = () => resolve("asked again")));
  const subscription = clientFor(user, {
    fetch: (request) => {
      if (++attempts > 1) askAgain();
      return fetch(request);
    },
  }).subscribe(other.id, (event) => assert.fail(`an event came: ${JSON.stringify(event)}`), {
    onError: (error) => errors.push(error),
  });

  // Whichever comes first: the end of the subscription, or a second request for the stream.
  const ended = await Promise.race([subscription.ended, askedAgain]);
  await subscription.close();

  assert.ok(ended instanceof EventStreamError, `the subscription went on: ${String(ended)}`);
  assert.equal(ended.status, 403);
  assert.equal(ended.problem?.type, "urn:todo-api:problem:forbidden");
  assert.deepEqual(errors, [ended]);
  assert.equal(attempts, 1);
});

test("a stream refused for now (429, every place taken) is reported and tried again until it opens", async () => {
  const user = takeUser("end");
  const todo = clientFor(user);
  const held: Subscription[] = [];
  // MAX_STREAMS_PER_USER (5 by default) streams of the user's own, open at once.
  for (let open = 0; open < 5; open++) {
    const watch = opened();
    held.push(clientFor(user, { fetch: watch.fetch }).subscribe(user.id, () => {}));
    await watch.isOpen;
  }
  const errors: unknown[] = [];
  let refused = () => {};
  const wasRefused = new Promise<void>((resolve) => (refused = resolve));
  const seen = collector();
  const watch = opened();
  const waiting = clientFor(user, { fetch: watch.fetch }).subscribe(user.id, seen.onEvent, {
    onError: (error) => (errors.push(error), refused()),
  });

  await wasRefused;
  await held.pop()?.close(); // gives its place back
  await watch.isOpen; // the refused subscription asked again, and got in
  const { data: created } = await todo.createTask(user.id, { title: "Let in" });
  const [event] = await seen.until(1);
  await Promise.all([waiting, ...held].map((subscription) => subscription.close()));

  assert.ok(errors.length > 0);
  for (const error of errors) {
    assert.ok(error instanceof EventStreamError, String(error));
    assert.equal(error.status, 429);
    assert.equal(error.problem?.type, "urn:todo-api:problem:too-many-requests");
  }
  assert.equal(event?.type, "task.created");
  assert.deepEqual((event as { task: unknown }).task, created);
  assert.equal(await waiting.ended, undefined, "ended by close(), not by the 429");
});

test("a fresh token refused too is reported, and the subscription goes on asking for one", async () => {
  const user = takeUser("end");
  const asked: boolean[] = [];
  let attemptThird = () => {};
  const third = new Promise<string>((resolve) => (attemptThird = () => resolve("attempt 3")));
  let report = () => {};
  const reported = new Promise<string>((resolve) => (report = () => resolve("reported")));
  const errors: unknown[] = [];
  const subscription = createTodoClient({
    baseUrl,
    // A token the API never accepts (expired), however fresh: a sign-in gone wrong.
    getToken: async ({ fresh }) => (asked.push(fresh), user.expiredToken),
    fetch: (request) => {
      if (asked.length === 3) attemptThird(); // getToken is asked once per connection, before it
      return fetch(request);
    },
  }).subscribe(user.id, (event) => assert.fail(`an event came: ${JSON.stringify(event)}`), {
    onError: (error) => (errors.push(error), report()),
  });

  // The refusal of the fresh token is told before the next attempt.
  const first = await Promise.race([reported, third]);
  await third;
  await subscription.close();

  assert.equal(first, "reported");
  const [error] = errors;
  assert.ok(error instanceof EventStreamError, String(error));
  assert.equal(error.status, 401);
  assert.equal(error.problem?.type, "urn:todo-api:problem:unauthorized");
  assert.deepEqual(asked.slice(0, 3), [false, true, true], "asked for a fresh token again");
  assert.equal(await subscription.ended, undefined, "ended by close(), not by the 401");
});

test("a baseUrl with a path (an API behind a gateway) keeps it for the stream too", async () => {
  const user = takeUser("end");
  const writer = clientFor(user);
  const gateway = `${baseUrl}/todo`;
  const asked: string[] = [];
  // A gateway that serves the API under /todo and nothing anywhere else.
  const watch = opened(async (request) => {
    asked.push(request.url);
    if (!request.url.startsWith(`${gateway}/`)) return new Response(null, { status: 404 });
    return fetch(new Request(baseUrl + request.url.slice(gateway.length), request));
  });
  const todo = createTodoClient({ baseUrl: `${gateway}/`, getToken: async () => user.token, fetch: watch.fetch });
  const seen = collector();
  const subscription = todo.subscribe(user.id, seen.onEvent);
  const refused = subscription.ended.then((error) => error && assert.fail(`the stream was refused: ${error}`));
  await Promise.race([watch.isOpen, refused]);

  const { data: created } = await writer.createTask(user.id, { title: "Through the gateway" });
  const [event] = await seen.until(1);
  const listed = await todo.listTasks(user.id);
  await subscription.close();

  assert.deepEqual(event, { type: "task.created", id: (event as { id: string }).id, task: created });
  assert.deepEqual(listed.data, [created]);
  assert.deepEqual(asked, [`${gateway}/api/${user.id}/events`, `${gateway}/api/${user.id}/tasks`]);
});

test("an idle stream that reconnects resumes from the id it opened with, without a reset", async () => {
  const user = takeUser("end");
  const todo = clientFor(user);
  const { data: before } = await todo.createTask(user.id, { title: "Before the stream" });
  assert.ok(before);
  const sentIds: (string | null)[] = [];
  let openingId: string | undefined;
  let reopen = () => {};
  const reopened = new Promise<void>((resolve) => (reopen = resolve));
  const seen = collector();
  const subscription = clientFor(user, {
    fetch: async (request) => {
      sentIds.push(request.headers.get("Last-Event-ID"));
      const response = await fetch(request);
      if (sentIds.length > 1) {
        if (response.ok) reopen();
        return response;
      }
      // The first stream ends right after its opening `id:` block (no event yet), as one does when
      // its token expires or the network drops while the user is idle.
      const reader = response.body!.getReader();
      const decoder = new TextDecoder();
      let head = "";
      while (!/\r?\n\r?\n/.test(head)) {
        const { value, done } = await reader.read();
        if (done) break;
        head += decoder.decode(value, { stream: true });
      }
      await reader.cancel();
      openingId = /^id: ?(\d+)\r?$/m.exec(head)?.[1];
      return new Response(head, response);
    },
  }).subscribe(user.id, seen.onEvent);
  await reopened;

  const { data: created } = await todo.createTask(user.id, { title: "After the reconnect" });
  const [event] = await seen.until(1);
  await subscription.close();

  assert.ok(openingId, "the stream opened with a bare id");
  assert.deepEqual(sentIds, [null, openingId], "reconnected with the id the stream opened with");
  assert.deepEqual(event, { type: "task.created", id: (event as { id: string }).id, task: created });
  assert.equal(subscription.lastEventId, (event as { id: string }).id);
});

test("a replayed older version of a task does not replace the newer one this client wrote", async () => {
  const user = takeUser("end");
  const todo = clientFor(user);
  const { data: task } = await todo.createTask(user.id, { title: "v1" });
  assert.ok(task);
  await todo.updateTask(user.id, task.id, { title: "v2" });
  const { data: latest } = await todo.updateTask(user.id, task.id, { title: "v3" });
  assert.equal(latest?.version, 3);
  // A stream resumed from before them replays all three versions; a write made while the first
  // is shown is made from the newest this client has seen, version 3.
  let completing: ReturnType<typeof todo.setTaskCompletion> | undefined;
  const seen = collector();
  const subscription = todo.subscribe(
    user.id,
    (event) => {
      if (event.type === "task.created") completing = todo.setTaskCompletion(user.id, task.id, true);
      seen.onEvent(event);
    },
    { lastEventId: "0" },
  );
  const replayed = await seen.until(3);
  const completed = await completing;
  await subscription.close();

  assert.deepEqual(
    replayed.map((event) => ("task" in event ? event.task.version : event)),
    [1, 2, 3],
  );
  assert.equal(completed?.response.status, 200, JSON.stringify(completed?.error));
  const stored = await clientFor(user).getTask(user.id, task.id);
  assert.deepEqual([stored.data?.title, stored.data?.completed, stored.data?.version], ["v3", true, 4]);
});

test("streams cut right after they open are retried ever more slowly, until one delivers", async (t) => {
  // Full jitter at its top, and the client's waits on a clock this test moves: 500 ms, then 1 s, 2 s.
  t.mock.method(Math, "random", () => 1);
  t.mock.timers.enable({ apis: ["setTimeout"] });
  // Whatever follows without waiting for the network (a timer's callback, what it sets off) is done.
  const settled = () => new Promise<void>((resolve) => setImmediate(resolve));
  const user = takeUser("end");
  const todo = clientFor(user);
  // Each stream of the API is answered 200 and opens; then, as a server that fails on what it reads
  // next (or a proxy that drops it) would, the first is cut, the second ended, the third cut. The
  // fourth goes on and delivers an event, then is cut too.
  const endings = ["cut", "ended", "cut"] as const;
  const end: (() => void)[] = [];
  const ended = endings.map((_, attempt) => new Promise<void>((resolve) => (end[attempt] = resolve)));
  let attempts = 0;
  let cutLive = () => {};
  let isLive = () => {};
  const wentLive = new Promise<void>((resolve) => (isLive = resolve));
  let deliver: (event: TaskEvent) => void = () => {};
  const delivered = new Promise<TaskEvent>((resolve) => (deliver = resolve));
  const errors: unknown[] = [];
  let reportCut = () => {};
  const lastCutReported = new Promise<void>((resolve) => (reportCut = resolve));
  const subscription = clientFor(user, {
    // The API's own stream, relayed until this test cuts (or ends) it.
    fetch: async (request) => {
      const attempt = attempts++;
      const ending = endings[attempt];
      const response = await fetch(request);
      const reader = response.body!.getReader();
      let head = "";
      let relay!: ReadableStreamDefaultController<Uint8Array>;
      const stop = (how: "cut" | "ended") => {
        if (how === "cut") relay.error(new TypeError("terminated"));
        else relay.close();
        void reader.cancel();
        end[attempt]?.();
      };
      request.signal.addEventListener("abort", () => stop("cut"), { once: true }); // close()
      const body = new ReadableStream<Uint8Array>({
        start: (controller) => void (relay = controller),
        async pull(controller) {
          // Past the opening `id:` block, the next read is where the stream is cut or ended.
          if (ending && /\r?\n\r?\n/.test(head)) return stop(ending);
          const { value, done } = await reader.read();
          if (done) return;
          head += new TextDecoder().decode(value);
          controller.enqueue(value);
        },
      });
      if (!ending) {
        cutLive = () => stop("cut");
        isLive();
      }
      return new Response(body, response);
    },
  }).subscribe(user.id, (event) => deliver(event), {
    onError: (error) => errors.push(error) === 3 && reportCut(),
  });

  /** The client asks again `ms` after its last attempt ended, and not a moment before. */
  async function retriedAfter(ms: number) {
    await settled();
    const before = attempts;
    t.mock.timers.tick(ms - 1);
    await settled();
    assert.equal(attempts, before, `asked again before ${ms} ms`);
    t.mock.timers.tick(1);
    await settled();
    assert.equal(attempts, before + 1, `not asked again after ${ms} ms`);
  }
  for (const [attempt, ms] of [500, 1000, 2000].entries()) {
    await ended[attempt];
    await retriedAfter(ms);
  }

  // The fourth stream delivers an event: its cut is retried after the first backoff again.
  await wentLive;
  const { data: created } = await todo.createTask(user.id, { title: "Delivered" });
  const event = await delivered;
  cutLive();
  await lastCutReported;
  await retriedAfter(500);
  await subscription.close();

  assert.deepEqual(event, { type: "task.created", id: (event as { id: string }).id, task: created });
  assert.equal(errors.length, 3, "each cut reported (the stream that ended is no error)");
});
