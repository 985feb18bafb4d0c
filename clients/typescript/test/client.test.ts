/**
 * The client against a live API (live_api.ts says what tests/test_typescript_client.py gives it).
 */
import assert from "node:assert/strict";
import { createServer, connect, type AddressInfo, type Socket } from "node:net";
import { test, type TestContext } from "node:test";

import { createTodoClient, etagOf, type ListQuery, type Task, type TodoClient } from "../src/index.js";
import { baseUrl, clientFor, takeUser, type TestUser } from "./live_api.js";

test("a create whose answer is lost is retried with the same key and makes one task", async () => {
  const user = takeUser("start");
  const keys: (string | null)[] = [];
  let firstAnswer: unknown;
  const todo = clientFor(user, {
    // The first POST reaches the server and is answered, but the client never hears the answer:
    // what a timeout or a dropped connection looks like from the browser.
    fetch: async (request) => {
      if (request.method !== "POST") return fetch(request);
      keys.push(request.headers.get("Idempotency-Key"));
      const response = await fetch(request);
      if (keys.length > 1) return response;
      firstAnswer = await response.json();
      throw new TypeError("fetch failed", { cause: new Error("other side closed") });
    },
  });

  const created = await todo.createTask(user.id, { title: "Exactly once" });

  assert.equal(created.response.status, 201);
  assert.equal(keys.length, 2);
  assert.ok(keys[0], "the create carried an Idempotency-Key");
  assert.equal(keys[1], keys[0]);
  assert.deepEqual(created.data, firstAnswer, "the retry got the first attempt's answer");
  const listed = await todo.listTasks(user.id);
  assert.deepEqual(
    listed.data?.map((task) => task.title),
    ["Exactly once"],
  );
});

test("listing follows the Link header page by page and sees every task once", async () => {
  const user = takeUser("start");
  const todo = clientFor(user);
  const created: number[] = [];
  for (let i = 1; i <= 5; i++) {
    const { data } = await todo.createTask(user.id, { title: `Task ${i}` });
    assert.ok(data);
    created.push(data.id);
  }

  const pages: number[][] = [];
  for (let query: ListQuery | undefined = { limit: 2 }; query; ) {
    const page = await todo.listTasks(user.id, query);
    assert.ok(page.data, `listing failed: ${JSON.stringify(page.error)}`);
    pages.push(page.data.map((task) => task.id));
    query = page.next;
  }

  assert.deepEqual(
    pages.map((ids) => ids.length),
    [2, 2, 1],
  );
  assert.deepEqual(pages.flat(), [...created].reverse(), "newest first, each task once");
});

test("an update with a stale ETag is refused with 412 and changes nothing", async () => {
  const user = takeUser("start");
  const mine = clientFor(user);
  const elsewhere = clientFor(user); // another tab: an ETag memory of its own
  const { data: task } = await mine.createTask(user.id, { title: "Original" });
  assert.ok(task);
  const changed = await elsewhere.updateTask(user.id, task.id, { title: "Changed elsewhere" });
  assert.equal(changed.response.status, 200);

  // `mine` still holds the ETag of the create and sends it as If-Match.
  const stale = await mine.updateTask(user.id, task.id, { title: "Mine" });

  assert.equal(stale.response.status, 412);
  assert.equal(stale.error?.type, "urn:todo-api:problem:precondition-failed");
  assert.equal(stale.response.headers.get("ETag"), changed.response.headers.get("ETag"));
  const current = await mine.getTask(user.id, task.id);
  if (current.error) assert.fail(current.error.detail);
  // Asked without ifNoneMatch, no 304 is in its type: once the error is ruled out, data is a task.
  const read: Task = current.data;
  assert.equal(read.title, "Changed elsewhere");
  const unchanged = await mine.getTask(user.id, task.id, {
    ifNoneMatch: current.response.headers.get("ETag") ?? undefined,
  });
  assert.equal(unchanged.response.status, 304);
  // Having read the task again, `mine` holds its current ETag, and the same update goes through.
  const retried = await mine.updateTask(user.id, task.id, { title: "Mine" });
  assert.equal(retried.data?.title, "Mine");
});

test("setTaskCompletion toggles without a body and sets with one", async () => {
  const user = takeUser("start");
  const todo = clientFor(user);
  const { data: task } = await todo.createTask(user.id, { title: "Toggle me" });
  assert.ok(task);
  assert.equal(task.completed, false);

  const states: (boolean | undefined)[] = [];
  for (const completed of [undefined, undefined, true, true]) {
    const result = await todo.setTaskCompletion(user.id, task.id, completed);
    assert.equal(result.response.status, 200, JSON.stringify(result.error));
    states.push(result.data?.completed);
  }

  assert.deepEqual(states, [true, false, true, true]);
});

test("a deleted task is gone: getTask answers 404", async () => {
  const user = takeUser("start");
  const todo = clientFor(user);
  const { data: task } = await todo.createTask(user.id, { title: "Delete me" });
  assert.ok(task);

  const deleted = await todo.deleteTask(user.id, task.id);
  assert.equal(deleted.response.status, 204);

  const gone = await todo.getTask(user.id, task.id);
  assert.equal(gone.response.status, 404);
  assert.equal(gone.error?.type, "urn:todo-api:problem:not-found");
});

test("a token the API refuses is replaced by a fresh one and the request sent again", async () => {
  const user = takeUser("start");
  const asked: boolean[] = [];
  const todo = createTodoClient({
    baseUrl,
    getToken: async ({ fresh }) => {
      asked.push(fresh);
      return fresh ? user.token : user.expiredToken;
    },
  });

  // A create, so the retry must send the body again.
  const created = await todo.createTask(user.id, { title: "After a refresh" });

  assert.equal(created.response.status, 201, JSON.stringify(created.error));
  assert.deepEqual(asked, [false, true]);
  assert.equal(created.data?.title, "After a refresh");
});

test("an edit made in another tab after this one listed is a 412, for an update and a toggle", async () => {
  const user = takeUser("start");
  const mine = clientFor(user);
  const elsewhere = clientFor(user); // another tab: an ETag memory of its own
  const { data: task } = await elsewhere.createTask(user.id, { title: "Original" });
  assert.ok(task);
  const listed = await mine.listTasks(user.id); // `mine` has only ever seen the task in a list
  assert.deepEqual(
    listed.data?.map((listedTask) => [listedTask.id, listedTask.version]),
    [[task.id, 1]],
  );
  const changed = await elsewhere.updateTask(user.id, task.id, { title: "Changed elsewhere" });
  assert.equal(changed.response.status, 200);
  assert.equal(changed.response.headers.get("ETag"), etagOf({ id: task.id, version: 2 }));

  const stale = await mine.updateTask(user.id, task.id, { title: "Mine" });
  const staleToggle = await mine.setTaskCompletion(user.id, task.id);

  assert.equal(stale.response.status, 412);
  assert.equal(staleToggle.response.status, 412);
  assert.equal(staleToggle.error?.type, "urn:todo-api:problem:precondition-failed");
  const current = await elsewhere.getTask(user.id, task.id);
  assert.equal(current.data?.title, "Changed elsewhere");
  assert.equal(current.data?.completed, false);
});

test("a toggle retried after its answer was lost is a 412, not a flip back", async () => {
  const user = takeUser("start");
  let dropped = 0;
  const todo = clientFor(user, {
    // The first PATCH reaches the server and is done, but its answer never reaches the client.
    fetch: async (request) => {
      const response = await fetch(request);
      if (request.method !== "PATCH" || dropped++ > 0) return response;
      await response.body?.cancel();
      throw new TypeError("fetch failed", { cause: new Error("other side closed") });
    },
  });
  const { data: task } = await clientFor(user).createTask(user.id, { title: "Toggle once" });
  assert.ok(task);
  await todo.listTasks(user.id); // as a page does: the task is known from the list only

  await assert.rejects(todo.setTaskCompletion(user.id, task.id), TypeError);
  const retried = await todo.setTaskCompletion(user.id, task.id);

  assert.equal(retried.response.status, 412);
  const now = await todo.getTask(user.id, task.id);
  assert.equal(now.data?.completed, true, "toggled once, by the attempt whose answer was lost");
  assert.equal(now.data?.version, 2);
});

test("a repeated create shows the task as it is now, so the next write is not a 412", async () => {
  const user = takeUser("start");
  const mine = clientFor(user);
  const elsewhere = clientFor(user);
  const idempotencyKey = crypto.randomUUID();
  const first = await mine.createTask(user.id, { title: "Draft" }, { idempotencyKey });
  assert.ok(first.data);
  assert.equal(first.response.headers.get("Idempotent-Replayed"), null);
  await elsewhere.updateTask(user.id, first.data.id, { title: "Edited" });

  const repeat = await mine.createTask(user.id, { title: "Draft" }, { idempotencyKey });

  assert.equal(repeat.response.status, 201);
  assert.equal(repeat.response.headers.get("Idempotent-Replayed"), "true");
  assert.equal(repeat.data?.title, "Edited");
  assert.equal(repeat.response.headers.get("ETag"), etagOf({ id: first.data.id, version: 2 }));
  const next = await mine.setTaskCompletion(user.id, first.data.id, true);
  assert.equal(next.response.status, 200, JSON.stringify(next.error));
});

/** A 503 as the API sends it while isolation is unverified. */
function isolationUnverified(retryAfter: string): Response {
  const problem = {
    type: "urn:todo-api:problem:isolation-unverified",
    title: "Isolation unverified",
    status: 503,
    detail: "the last isolation check did not complete",
  };
  return Response.json(problem, { status: 503, headers: { "Retry-After": retryAfter } });
}

/**
 * A create whose first attempt is answered with `refusal` and whose later ones reach the API: how
 * long the client waited before each later one (each wait cut short), the Idempotency-Key of each
 * attempt, the create's result and the titles the user has afterwards.
 */
async function createAfterARefusal(t: TestContext, user: TestUser, refusal: Response, title: string) {
  const keys: (string | null)[] = [];
  const waits: number[] = [];
  let refused = false;
  const realSetTimeout = globalThis.setTimeout;
  // fetch (undici) sets timers of its own meanwhile, with an argument their callback needs.
  t.mock.method(globalThis, "setTimeout", ((callback: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    if (!refused) return realSetTimeout(callback, ms, ...args);
    refused = false;
    waits.push(ms ?? 0);
    return realSetTimeout(callback, 0, ...args);
  }) as typeof setTimeout);
  const todo = clientFor(user, {
    fetch: async (request) => {
      if (request.method !== "POST") return fetch(request);
      keys.push(request.headers.get("Idempotency-Key"));
      if (keys.length > 1) return fetch(request);
      refused = true;
      return refusal;
    },
  });
  const created = await todo.createTask(user.id, { title });
  const listed = await todo.listTasks(user.id);
  return { waits, keys, created, titles: listed.data?.map((task) => task.title) };
}

test("a create answered 503 with Retry-After is sent again after it, with the same key", async (t) => {
  const user = takeUser("start");
  const refusal = isolationUnverified("8");
  const { waits, keys, created, titles } = await createAfterARefusal(t, user, refusal, "After the wait");

  assert.deepEqual(waits, [8000], "waited as long as Retry-After asked");
  assert.equal(created.response.status, 201, JSON.stringify(created.error));
  assert.deepEqual(keys, [keys[0], keys[0]]);
  assert.deepEqual(titles, ["After the wait"]);
});

test("a create answered 409 idempotency-key-in-use is sent again after its Retry-After, with the same key", async (t) => {
  // The API's answer while other requests with the key are being handled (api/http/problems.py).
  const inUse = Response.json(
    {
      type: "urn:todo-api:problem:idempotency-key-in-use",
      title: "Idempotency key in use",
      status: 409,
      detail: "Another request with this Idempotency-Key is being handled at the same time.",
    },
    { status: 409, headers: { "Retry-After": "1" } },
  );

  const user = takeUser("start");
  const { waits, keys, created, titles } = await createAfterARefusal(t, user, inUse, "Once the other is done");

  assert.deepEqual(waits, [1000], "waited as long as Retry-After asked");
  assert.equal(created.response.status, 201, JSON.stringify(created.error));
  assert.deepEqual(keys, [keys[0], keys[0]]);
  assert.deepEqual(titles, ["Once the other is done"]);
});

test("a create's Retry-After may be an HTTP-date; one that is neither a date nor seconds gets the client's own wait", async (t) => {
  const user = takeUser("start");
  // A gateway in front of the API may send a date (RFC 9110 allows either); whole seconds are lost.
  const inEightSeconds = new Date(Date.now() + 8000).toUTCString();
  const dated = await createAfterARefusal(t, user, isolationUnverified(inEightSeconds), "After the date");
  assert.equal(dated.created.response.status, 201, JSON.stringify(dated.created.error));
  assert.equal(dated.waits.length, 1);
  assert.ok(6000 < dated.waits[0]! && dated.waits[0]! <= 8000, `waited ${dated.waits[0]} ms, not until the date`);

  const unusable = ["", "-5", "soon", "1.5e9", "Infinity"];
  const waits = [];
  for (const retryAfter of unusable) {
    const title = `Retry-After: ${JSON.stringify(retryAfter)}`;
    const { waits: [wait], created } = await createAfterARefusal(t, user, isolationUnverified(retryAfter), title);
    assert.equal(created.response.status, 201, JSON.stringify(created.error));
    waits.push(wait);
  }

  assert.deepEqual(waits, [200, 200, 200, 200, 200], "the client's own first wait");
  const listed = await clientFor(user).listTasks(user.id);
  assert.deepEqual(
    listed.data?.map((task) => task.title).sort(),
    ["After the date", ...unusable.map((retryAfter) => `Retry-After: ${JSON.stringify(retryAfter)}`)].sort(),
    "one task each",
  );
});

/**
 * A client for `user` whose every create is answered with `answer()` instead of the API's (every other
 * request reaches the API), and how many creates it has sent.
 */
function clientAnsweringCreatesWith(user: TestUser, answer: () => Response) {
  let sent = 0;
  const todo = clientFor(user, {
    fetch: async (request) => {
      if (request.method !== "POST") return fetch(request);
      sent++;
      return answer();
    },
  });
  return { todo, attempts: () => sent };
}

test("a create asked to wait longer than the client does is answered with that 503 at once", async () => {
  const user = takeUser("start");
  const { todo, attempts } = clientAnsweringCreatesWith(user, () => isolationUnverified("60"));

  const refused = await todo.createTask(user.id, { title: "Not now" });

  assert.equal(attempts(), 1);
  assert.equal(refused.response.status, 503);
  assert.equal(refused.error?.type, "urn:todo-api:problem:isolation-unverified");
  assert.equal(refused.response.headers.get("Retry-After"), "60");
  const listed = await todo.listTasks(user.id);
  assert.deepEqual(listed.data, []);
});

test("a create refused for the task limit (409 task-limit-reached) is the answer: it is sent once", async () => {
  const user = takeUser("start");
  // The API's answer to a user at MAX_TASKS_PER_USER (api/http/problems.py): no other attempt fares
  // better, and only 409 idempotency-key-in-use says to send it again.
  const { todo, attempts } = clientAnsweringCreatesWith(user, () =>
    Response.json(
      {
        type: "urn:todo-api:problem:task-limit-reached",
        title: "Task limit reached",
        status: 409,
        detail: "You have 10000 tasks, the most one user may have; delete some to create more.",
      },
      { status: 409 },
    ),
  );

  const refused = await todo.createTask(user.id, { title: "One too many" });

  assert.equal(attempts(), 1, "sent once, not again and again for the same 409");
  assert.equal(refused.response.status, 409);
  assert.equal(refused.error?.type, "urn:todo-api:problem:task-limit-reached");
  assert.equal(refused.error?.detail, "You have 10000 tasks, the most one user may have; delete some to create more.");
});

test("a write answered 404 forgets the task's version, as a delete does", async () => {
  const user = takeUser("start");
  const sent: (string | null)[] = [];
  const mine = clientFor(user, {
    fetch: (request) => {
      if (request.method !== "GET") sent.push(request.headers.get("If-Match"));
      return fetch(request);
    },
  });
  const elsewhere = clientFor(user); // another tab, which deletes the tasks
  const { data: first } = await elsewhere.createTask(user.id, { title: "Updated after its delete" });
  const { data: second } = await elsewhere.createTask(user.id, { title: "Toggled after its delete" });
  assert.ok(first && second);
  await mine.listTasks(user.id);
  await elsewhere.deleteTask(user.id, first.id);
  await elsewhere.deleteTask(user.id, second.id);

  const statuses = [];
  for (let round = 0; round < 2; round++) {
    statuses.push((await mine.updateTask(user.id, first.id, { title: "Gone" })).response.status);
    statuses.push((await mine.setTaskCompletion(user.id, second.id)).response.status);
  }

  assert.deepEqual(statuses, [404, 404, 404, 404]);
  assert.deepEqual(sent, [etagOf(first), etagOf(second), null, null], "no version kept of a task that is gone");
});

test("a 404 from something in front of the API keeps the task's version: the next write is still a 412", async () => {
  const user = takeUser("start");
  let gatewayAnswers = true;
  const mine = clientFor(user, {
    // A gateway redeploying answers the first update with a page of its own; the API never sees it.
    fetch: async (request) => {
      if (request.method !== "PUT" || !gatewayAnswers) return fetch(request);
      gatewayAnswers = false;
      return new Response("<html>Not Found</html>", { status: 404, headers: { "Content-Type": "text/html" } });
    },
  });
  const elsewhere = clientFor(user); // another tab: an ETag memory of its own
  const { data: task } = await mine.createTask(user.id, { title: "Original" });
  assert.ok(task);
  const lost = await mine.updateTask(user.id, task.id, { title: "Mine" });
  assert.equal(lost.response.status, 404);
  assert.equal(lost.error?.type, "about:blank");
  const changed = await elsewhere.updateTask(user.id, task.id, { title: "Changed elsewhere" });
  assert.equal(changed.response.status, 200);

  const stale = await mine.updateTask(user.id, task.id, { title: "Mine" });

  assert.equal(stale.response.status, 412, "sent with the version `mine` last saw, not unconditionally");
  assert.equal(stale.error?.type, "urn:todo-api:problem:precondition-failed");
  const current = await elsewhere.getTask(user.id, task.id);
  assert.equal(current.data?.title, "Changed elsewhere");
  assert.equal(current.data?.version, 2);
});

test("an answer without a problem document (a proxy's page, an empty 502) gets one from its status", async () => {
  const user = takeUser("start");
  const answers = [
    new Response("<html>Bad gateway</html>", {
      status: 502,
      statusText: "Bad Gateway",
      headers: { "Content-Type": "text/html" },
    }),
    new Response(null, { status: 503, statusText: "Service Unavailable" }),
    new Response(null, { status: 504, headers: { "Content-Length": "0" } }),
    Response.json({ message: "not a problem document" }, { status: 500 }),
  ];
  // A proxy in front of the API answers in its place.
  const todo = clientFor(user, { fetch: async () => answers.shift() ?? Response.error() });

  const results = [
    await todo.listTasks(user.id),
    await todo.getTask(user.id, 1),
    await todo.deleteTask(user.id, 1),
    await todo.updateTask(user.id, 1, { title: "Behind a proxy" }),
  ];

  assert.deepEqual(
    results.map((result) => result.error),
    [
      { type: "about:blank", title: "Bad Gateway", status: 502, detail: "<html>Bad gateway</html>" },
      { type: "about:blank", title: "Service Unavailable", status: 503, detail: "Service Unavailable" },
      { type: "about:blank", title: "HTTP 504", status: 504, detail: "HTTP 504" },
      { type: "about:blank", title: "HTTP 500", status: 500, detail: '{"message":"not a problem document"}' },
    ],
  );
});

test("a 2xx that is not the API's JSON throws, and a create answered so is not sent again", async () => {
  const user = takeUser("start");
  const sent: string[] = [];
  // Something in front of the API answers in its place: a captive portal's page, a body of `null`.
  const answers = [
    () => new Response("<html>Sign in to the Wi-Fi</html>", { status: 200, headers: { "Content-Type": "text/html" } }),
    () => Response.json(null, { status: 201 }),
    () => Response.json({ ok: true }, { status: 200 }),
    () => Response.json([null], { status: 200 }),
  ];
  const todo = clientFor(user, {
    fetch: async (request) => (sent.push(request.method), (answers.shift() ?? (() => Response.error()))()),
  });

  await assert.rejects(todo.listTasks(user.id), SyntaxError);
  await assert.rejects(todo.createTask(user.id, { title: "Behind a portal" }), {
    name: "SyntaxError",
    message: /^the 201 answer from .* is not the API's JSON: null$/,
  });
  await assert.rejects(todo.updateTask(user.id, 1, { title: "Behind a portal" }), SyntaxError);
  await assert.rejects(todo.listTasks(user.id), SyntaxError);

  assert.deepEqual(sent, ["GET", "POST", "PUT", "GET"], "the create was sent once");
});

test("what getToken throws reaches the caller as thrown: nothing is sent, nor sent again", async () => {
  const user = takeUser("start");
  const sent: string[] = [];
  // What `const { data } = await authClient.token(); return data.token;` throws when signed out.
  const bug = new TypeError("Cannot read properties of null (reading 'token')");
  let asked = 0;
  const todo = clientFor(user, {
    getToken: async () => {
      asked++;
      throw bug;
    },
    fetch: (request) => (sent.push(request.method), fetch(request)),
  });

  await assert.rejects(todo.createTask(user.id, { title: "Never sent" }), (error) => error === bug);

  assert.equal(asked, 1, "not retried as a dropped connection is");
  assert.deepEqual(sent, []);
  const listed = await clientFor(user).listTasks(user.id);
  assert.deepEqual(listed.data, []);
});

test("a getToken that resolves to no bearer token is an error naming getToken, and nothing is sent", async () => {
  const user = takeUser("start");
  const sent: string[] = [];
  const notTokens: unknown[] = [undefined, null, { token: user.token }, "", `${user.token}\r\nX-Injected: 1`];

  for (const notAToken of notTokens) {
    const todo = clientFor(user, {
      getToken: async () => notAToken as string,
      fetch: (request) => (sent.push(request.method), fetch(request)),
    });
    await assert.rejects(todo.createTask(user.id, { title: "Never sent" }), (error) => {
      assert.ok(error instanceof TypeError, String(error));
      assert.match(error.message, /^getToken resolved to .+, not a JWT$/);
      assert.ok(!error.message.includes(user.token), "the token is not shown");
      return true;
    });
  }

  assert.deepEqual(sent, []);
  const listed = await clientFor(user).listTasks(user.id);
  assert.deepEqual(listed.data, []);
  // White space around a token is no reason to refuse it: a header's value drops it too.
  const readFromAFile = await clientFor(user, { getToken: async () => `${user.token}\n` }).listTasks(user.id);
  assert.equal(readFromAFile.response.status, 200);
});

test("a signal cancels a call waiting on a getToken that never settles: nothing is sent", async () => {
  const user = takeUser("start");
  const sent: string[] = [];
  const handedOn: (AbortSignal | undefined)[] = [];
  const todo = clientFor(user, {
    getToken: ({ signal }) => (handedOn.push(signal), new Promise<string>(() => {})),
    fetch: (request) => (sent.push(request.method), fetch(request)),
  });
  const controller = new AbortController();

  const creating = todo.createTask(user.id, { title: "Never sent" }, { signal: controller.signal });
  await new Promise((resolve) => setTimeout(resolve, 50));
  controller.abort();

  await assert.rejects(creating, { name: "AbortError" });
  assert.deepEqual(sent, []);
  assert.equal(handedOn.length, 1, "asked once");
  assert.equal(handedOn[0]?.aborted, true, "getToken had the signal, to cancel its own fetch");
  const listed = await clientFor(user).listTasks(user.id);
  assert.deepEqual(listed.data, []);
});

test("a signal cancels a create during its wait before sending it again: it is not sent again", async () => {
  const user = takeUser("start");
  let posts = 0;
  const controller = new AbortController();
  const todo = clientFor(user, {
    fetch: async (request) => {
      if (request.method !== "POST") return fetch(request);
      posts++;
      setTimeout(() => controller.abort(), 50); // while the client waits the 8 s it was asked to
      return isolationUnverified("8");
    },
  });
  const started = Date.now();

  await assert.rejects(todo.createTask(user.id, { title: "Not now" }, { signal: controller.signal }), {
    name: "AbortError",
  });

  assert.ok(Date.now() - started < 2000, "rejected at the abort, not after the wait");
  assert.equal(posts, 1);
  await new Promise((resolve) => setTimeout(resolve, 300)); // a retry the abort missed would come by now
  assert.equal(posts, 1);
  const listed = await todo.listTasks(user.id);
  assert.deepEqual(listed.data, []);
});

test("every method takes a signal, and the request it sends carries it", async () => {
  const user = takeUser("start");
  const { data: task } = await clientFor(user).createTask(user.id, { title: "Unchanged" });
  assert.ok(task);
  const reached: string[] = [];
  const todo = clientFor(user, {
    // Each request is held until it is aborted, then sent: the real fetch refuses it at once.
    fetch: async (request) => {
      await new Promise((resolve) => request.signal.addEventListener("abort", resolve, { once: true }));
      reached.push(request.method);
      return fetch(request);
    },
  });
  const calls = [
    (signal: AbortSignal) => todo.listTasks(user.id, {}, { signal }),
    (signal: AbortSignal) => todo.getTask(user.id, task.id, { signal }),
    (signal: AbortSignal) => todo.updateTask(user.id, task.id, { title: "Changed" }, { signal }),
    (signal: AbortSignal) => todo.setTaskCompletion(user.id, task.id, true, { signal }),
    (signal: AbortSignal) => todo.deleteTask(user.id, task.id, { signal }),
    (signal: AbortSignal) => todo.createTask(user.id, { title: "Not made" }, { signal }),
  ];

  for (const call of calls) {
    const controller = new AbortController();
    const calling = call(controller.signal);
    setTimeout(() => controller.abort(), 20);
    await assert.rejects(calling, { name: "AbortError" });
  }

  assert.deepEqual(reached, ["GET", "GET", "PUT", "PATCH", "DELETE", "POST"]);
  const listed = await clientFor(user).listTasks(user.id);
  assert.deepEqual(
    listed.data?.map((current) => [current.title, current.completed, current.version]),
    [["Unchanged", false, 1]],
  );
});

test("a token of the account signed in before gets the API's 403: a fresh one is asked for and the request sent again", async () => {
  const before = takeUser("start");
  const now = takeUser("start");
  const asked: boolean[] = [];
  // Better Auth's multi-session plugin switched the active account: the token kept is the other's.
  const todo = createTodoClient({
    baseUrl,
    getToken: async ({ fresh }) => (asked.push(fresh), fresh ? now.token : before.token),
  });

  const created = await todo.createTask(now.id, { title: "After switching accounts" });

  assert.equal(created.response.status, 201, JSON.stringify(created.error));
  assert.deepEqual(asked, [false, true]);
  const mine = await clientFor(now).listTasks(now.id);
  assert.deepEqual(
    mine.data?.map((task) => task.title),
    ["After switching accounts"],
  );
  const theirs = await clientFor(before).listTasks(before.id);
  assert.deepEqual(theirs.data, []);
});

test("another user's path is a 403 once a fresh token is refused too, and a 403 not the API's asks for none", async () => {
  const user = takeUser("start");
  const other = takeUser("start");
  const asked: boolean[] = [];
  const todo = createTodoClient({ baseUrl, getToken: async ({ fresh }) => (asked.push(fresh), user.token) });

  const created = await todo.createTask(other.id, { title: "Not theirs to have" });

  assert.equal(created.response.status, 403);
  assert.equal(created.error?.type, "urn:todo-api:problem:forbidden");
  assert.deepEqual(asked, [false, true], "one fresh token, then the answer");
  const theirs = await clientFor(other).listTasks(other.id);
  assert.deepEqual(theirs.data, []);

  // A WAF in front of the API refuses with a page of its own: that says nothing of the token.
  asked.length = 0;
  const behindAWaf = createTodoClient({
    baseUrl,
    getToken: async ({ fresh }) => (asked.push(fresh), user.token),
    fetch: async () => new Response("<html>Blocked</html>", { status: 403, headers: { "Content-Type": "text/html" } }),
  });
  const blocked = await behindAWaf.listTasks(user.id);
  assert.equal(blocked.response.status, 403);
  assert.equal(blocked.error?.detail, "<html>Blocked</html>");
  assert.deepEqual(asked, [false]);
});

test("a create no request can carry throws at once, as made: it is not sent again", async () => {
  const user = takeUser("start");
  const sent: string[] = [];
  const todo = clientFor(user, { fetch: (request) => (sent.push(request.method), fetch(request)) });
  const unsendable = [
    () => todo.createTask(user.id, { title: "A key with a line break" }, { idempotencyKey: "a\nb" }),
    () => todo.createTask(user.id, { title: "A key no header can carry" }, { idempotencyKey: "ключ" }),
    () => todo.createTask(user.id, { title: 1n } as unknown as { title: string }), // JSON has no BigInt
  ];

  for (const create of unsendable) {
    const started = Date.now();
    await assert.rejects(create(), TypeError);
    // The client's first wait before sending a create again is 200 ms.
    assert.ok(Date.now() - started < 200, `rejected after ${Date.now() - started} ms: it was retried`);
  }

  assert.deepEqual(sent, []);
  const listed = await todo.listTasks(user.id);
  assert.deepEqual(listed.data, []);
});

test("calls refused together for an expired token share one fresh token, even those answered after it came", async () => {
  const user = takeUser("start");
  let freshAsked = 0;
  let refreshed = () => {};
  const refresh = new Promise<void>((resolve) => (refreshed = resolve));
  let sentExpired = 0;
  const todo = createTodoClient({
    baseUrl,
    // The README's getToken: it keeps the token until asked for a fresh one, a round trip to Better Auth.
    getToken: async ({ fresh }) => {
      if (!fresh) return user.expiredToken;
      freshAsked++;
      await new Promise((resolve) => setTimeout(resolve, 50));
      refreshed();
      return user.token;
    },
    // The last call is held back, as a browser holds all but six calls to a host, and is sent with
    // the expired token only once the fresh one has come.
    fetch: async (request) => {
      if (request.headers.get("Authorization") === `Bearer ${user.expiredToken}` && ++sentExpired === 20) await refresh;
      return fetch(request);
    },
  });
  const live = todo.subscribe(user.id, () => {});

  const answers = await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      i % 2 ? todo.listTasks(user.id) : todo.createTask(user.id, { title: `Call ${i}` }),
    ),
  );
  await live.close();

  assert.deepEqual(
    answers.map((answer) => answer.response.status),
    Array.from({ length: 20 }, (_, i) => (i % 2 ? 200 : 201)),
  );
  assert.equal(sentExpired, 21, "every call and the stream were sent the expired token first");
  assert.equal(freshAsked, 1, "one fresh token for all of them");
  const listed = await clientFor(user).listTasks(user.id);
  assert.equal(listed.data?.length, 10);
});

/** Resolves once `condition` holds: a test waits for what it needs, however busy the machine is. */
async function until(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 10));
}

/** A fetch that counts the API's 401s, and the moment just after the client has had them. */
function countingRefusals() {
  const refused = { count: 0 };
  return {
    refused,
    fetch: async (request: Request) => {
      const response = await fetch(request);
      if (response.status === 401) refused.count++;
      return response;
    },
    // Each refused call asks for its fresh token as soon as it has freed the answer's connection.
    async untilRefused(count: number) {
      await until(() => refused.count >= count);
      await new Promise((resolve) => setTimeout(resolve, 50));
    },
  };
}

test("a call that gives up waiting on a shared fresh token leaves it to the others", async () => {
  const user = takeUser("start");
  const handedOn: (AbortSignal | undefined)[] = [];
  const waiting: ((token: string) => void)[] = [];
  const refusals = countingRefusals();
  const todo = createTodoClient({
    baseUrl,
    getToken: ({ fresh, signal }) => {
      if (!fresh) return Promise.resolve(user.expiredToken);
      handedOn.push(signal);
      return new Promise<string>((resolve) => waiting.push(resolve));
    },
    // The call that gives up is sent only once the other has asked for the fresh token, so that the
    // other cannot come to it after the call gave up (a busy machine may take longer than any pause):
    // it would find a token given up on and ask getToken anew, for a token this test never gives.
    fetch: async (request) => {
      if ((await request.clone().text()).includes('"Left"')) await until(() => handedOn.length > 0);
      return refusals.fetch(request);
    },
  });
  const leaving = new AbortController();

  const left = todo.createTask(user.id, { title: "Left" }, { signal: leaving.signal });
  const stayed = todo.createTask(user.id, { title: "Stayed" });
  await refusals.untilRefused(2);
  leaving.abort();
  await assert.rejects(left, { name: "AbortError" });
  const getTokenGaveUp = handedOn.map((signal) => signal?.aborted);
  for (const give of waiting) give(user.token);

  assert.equal((await stayed).response.status, 201);
  assert.deepEqual(getTokenGaveUp, [false], "asked once, and not told to give up while a call waits");
  const listed = await clientFor(user).listTasks(user.id);
  assert.deepEqual(
    listed.data?.map((task) => task.title),
    ["Stayed"],
  );

  // Once every call waiting has given up, getToken hears of it, to cancel its own fetch.
  const handedOnAlone: (AbortSignal | undefined)[] = [];
  const alone = new AbortController();
  const abandoned = createTodoClient({
    baseUrl,
    getToken: ({ fresh, signal }) =>
      fresh ? (handedOnAlone.push(signal), new Promise<string>(() => {})) : Promise.resolve(user.expiredToken),
  }).listTasks(user.id, {}, { signal: alone.signal });
  await until(() => handedOnAlone.length > 0); // refused, and waiting on the fresh token it asked for
  alone.abort();
  await assert.rejects(abandoned, { name: "AbortError" });
  assert.deepEqual(
    handedOnAlone.map((signal) => signal?.aborted),
    [true],
  );
});

/** The error a method of the client can give, as an app infers it. */
type ErrorOf<Method extends keyof TodoClient> = TodoClient[Method] extends (...args: never[]) => Promise<infer Answer>
  ? NonNullable<Answer extends { error?: infer Error } ? Error : never>
  : never;

/** What an app tells its user when a create fails: TypeScript holds the switch to every type a
 * create's answers can carry (`error` is `never` in `default` only when every case is covered). */
function explainCreateError(error: ErrorOf<"createTask">): string {
  switch (error.type) {
    case "urn:todo-api:problem:validation-error":
    case "urn:todo-api:problem:payload-too-large":
      return "fix the task";
    case "urn:todo-api:problem:unauthorized":
    case "urn:todo-api:problem:forbidden":
      return "sign in again";
    case "urn:todo-api:problem:task-limit-reached":
      return "delete a task first";
    case "urn:todo-api:problem:idempotency-key-reused":
    case "urn:todo-api:problem:task-deleted":
      return "already done";
    case "urn:todo-api:problem:too-many-requests":
    case "urn:todo-api:problem:idempotency-key-in-use":
    case "urn:todo-api:problem:request-timeout":
    case "urn:todo-api:problem:database-unavailable":
    case "urn:todo-api:problem:statement-timeout":
    case "urn:todo-api:problem:authentication-unavailable":
    case "urn:todo-api:problem:isolation-unverified":
    case "urn:todo-api:problem:outcome-unknown":
      return "try again later";
    case "urn:todo-api:problem:bad-request":
    case "urn:todo-api:problem:precondition-failed":
    case "urn:todo-api:problem:unsupported-media-type":
    case "urn:todo-api:problem:not-implemented":
    case "urn:todo-api:problem:internal-error":
    case "urn:todo-api:problem:http-error":
    case "about:blank":
      return "something went wrong";
    default: {
      const unhandled: never = error;
      return unhandled;
    }
  }
}

// A list is never answered as a create is: its error names only what a list's answers carry.
// @ts-expect-error a list's answers never carry task-deleted
export const neverAList: ErrorOf<"listTasks">["type"] = "urn:todo-api:problem:task-deleted";

test("each method's error names the problem types its answers list, so a switch on type covers them", async () => {
  const user = takeUser("start");
  const other = takeUser("start");
  const todo = clientFor(user);
  const idempotencyKey = crypto.randomUUID();
  const first = await todo.createTask(user.id, { title: "Once" }, { idempotencyKey });
  assert.ok(first.data, JSON.stringify(first.error));

  const reused = await todo.createTask(user.id, { title: "Another body" }, { idempotencyKey });
  const invalid = await todo.createTask(user.id, { title: "" });
  const theirs = await todo.createTask(other.id, { title: "Not mine" });
  await todo.deleteTask(user.id, first.data.id);
  const deleted = await todo.createTask(user.id, { title: "Once" }, { idempotencyKey });
  // Something in front of the API answers with a problem document of its own: not the API's type.
  const gateway = clientFor(user, {
    fetch: async () =>
      Response.json(
        { type: "https://gateway.example/quota", title: "Quota", status: 429, detail: "Slow down" },
        { status: 429, headers: { "Content-Type": "application/problem+json" } },
      ),
  });
  const inFront = await gateway.createTask(user.id, { title: "Never made" });

  const errors = [reused, invalid, theirs, deleted, inFront].map((answer) => answer.error);
  assert.deepEqual(
    errors.map((error) => [error?.status, error?.type]),
    [
      [422, "urn:todo-api:problem:idempotency-key-reused"],
      [422, "urn:todo-api:problem:validation-error"],
      [403, "urn:todo-api:problem:forbidden"],
      [410, "urn:todo-api:problem:task-deleted"],
      [429, "about:blank"],
    ],
  );
  assert.deepEqual(
    errors.map((error) => error && explainCreateError(error)),
    ["already done", "fix the task", "sign in again", "already done", "something went wrong"],
  );
  assert.match(inFront.error?.detail ?? "", /gateway\.example\/quota/, "the other document is kept as the detail");
  const listed = await clientFor(user).listTasks(user.id);
  assert.deepEqual(listed.data, []);
});

test("a fresh token a call gave up waiting on is asked for again by the next call refused", async () => {
  const user = takeUser("start");
  let freshAsked = 0;
  const refusals = countingRefusals();
  const todo = createTodoClient({
    baseUrl,
    // The first fresh token never comes (the auth server's answer lost); the next one does.
    getToken: async ({ fresh }) => {
      if (!fresh) return user.expiredToken;
      return ++freshAsked === 1 ? new Promise<string>(() => {}) : user.token;
    },
    fetch: refusals.fetch,
  });

  // A call left waiting (a page still open) holds on to the first, as long as it waits.
  const leftWaiting = new AbortController();
  const waiting = todo.getTask(user.id, 1, { signal: leftWaiting.signal });
  const givingUp = new AbortController(); // a timeout, say
  const gaveUp = todo.listTasks(user.id, {}, { signal: givingUp.signal });
  await refusals.untilRefused(2);
  givingUp.abort();
  await assert.rejects(gaveUp, { name: "AbortError" });
  const next = await todo.createTask(user.id, { title: "After the lost one" }, { signal: AbortSignal.timeout(5000) });
  leftWaiting.abort();

  assert.equal(next.response.status, 201, JSON.stringify(next.error));
  assert.equal(freshAsked, 2);
  await assert.rejects(waiting, { name: "AbortError" });
  const listed = await clientFor(user).listTasks(user.id);
  assert.deepEqual(
    listed.data?.map((task) => task.title),
    ["After the lost one"],
  );
});

test("calls made at once before any token is kept share one getToken, and a later call asks it again", async () => {
  const user = takeUser("start");
  const asked: boolean[] = [];
  const handedOn: (AbortSignal | undefined)[] = [];
  let signedIn = () => {};
  const firstToken = new Promise<void>((resolve) => (signedIn = resolve));
  const todo = createTodoClient({
    baseUrl,
    // The README's getToken on a page's first render: no token kept yet, so a round trip to Better Auth.
    getToken: async ({ fresh, signal }) => {
      asked.push(fresh);
      handedOn.push(signal);
      await firstToken;
      return user.token;
    },
  });
  const unmounted = new AbortController(); // a component gone before the token came

  const left = todo.listTasks(user.id, {}, { signal: unmounted.signal });
  const calls = [todo.listTasks(user.id), todo.createTask(user.id, { title: "First render" })];
  const events: string[] = [];
  const live = todo.subscribe(user.id, (event) => events.push(event.type));
  unmounted.abort();
  await assert.rejects(left, { name: "AbortError" });
  const getTokenGaveUp = handedOn.map((signal) => signal?.aborted);
  signedIn();
  const answers = await Promise.all(calls);
  await until(() => events.includes("reset"));
  await live.close();

  assert.deepEqual(
    answers.map((answer) => answer.response.status),
    [200, 201],
  );
  assert.deepEqual(asked, [false], "one getToken for the whole first render");
  assert.deepEqual(getTokenGaveUp, [false], "not told to give up while other calls wait");
  // Once it has answered, the next call asks again: the app may have changed its token since.
  const later = await todo.listTasks(user.id);
  assert.deepEqual(
    later.data?.map((task) => task.title),
    ["First render"],
  );
  assert.deepEqual(asked, [false, false]);
});

test("a create whose connection is cut after the API made it is sent again with its key: one task", async (t) => {
  const user = takeUser("start");
  const api = new URL(baseUrl);
  const keys: (string | undefined)[] = [];
  // A TCP proxy in front of the API that cuts the first create's connection once the API has answered
  // it, before the answer reaches the client: a real cut, as fetch itself reports it.
  const proxy = createServer((client) => {
    const upstream = connect(Number(api.port), api.hostname);
    let create = false;
    client.on("data", (chunk: Buffer) => {
      const head = chunk.toString("latin1");
      if (head.startsWith("POST ")) {
        create = true;
        keys.push(/^idempotency-key: *([^\r]*)/im.exec(head)?.[1]);
      }
      upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      if (create && keys.length === 1) return void (client.destroy(), upstream.destroy());
      client.write(chunk);
    });
    for (const [one, other] of [[client, upstream], [upstream, client]] as const) {
      one.on("error", () => other.destroy());
      one.on("close", () => other.destroy());
    }
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  t.after(() => proxy.close());
  const { port } = proxy.address() as AddressInfo;
  const todo = createTodoClient({ baseUrl: `http://127.0.0.1:${port}`, getToken: async () => user.token });

  const created = await todo.createTask(user.id, { title: "Cut once" });

  assert.equal(created.response.status, 201, JSON.stringify(created.error));
  assert.equal(created.response.headers.get("Idempotent-Replayed"), "true", "the second attempt found the first's task");
  assert.equal(keys.length, 2);
  assert.ok(keys[0]);
  assert.equal(keys[1], keys[0]);
  const listed = await clientFor(user).listTasks(user.id);
  assert.deepEqual(
    listed.data?.map((task) => task.title),
    ["Cut once"],
  );
});

test("a call's signal cancels it after garbage is collected, and close() ends a stream then too", async (t) => {
  const { port } = await silentServer(t);
  const user = takeUser("start");
  const todo = createTodoClient({ baseUrl: `http://127.0.0.1:${port}`, getToken: async () => user.token });

  const controller = new AbortController();
  const listing = todo.listTasks(user.id, {}, { signal: controller.signal });
  const creating = todo.createTask(user.id, { title: "Never answered" }, { signal: controller.signal });
  const subscription = todo.subscribe(user.id, () => {});
  await collectGarbage();
  controller.abort();

  for (const call of [listing, creating]) {
    assert.equal(await stuck(call.then(() => "answered", (error: Error) => error.name)), "AbortError");
  }
  assert.equal(await stuck(subscription.close().then(() => "closed")), "closed");
});

test("a fetch passed in that drops its second argument still lets the signal end a call, and close() a stream", async (t) => {
  const { port, held } = await silentServer(t);
  const user = takeUser("start");
  const todo = createTodoClient({
    baseUrl: `http://127.0.0.1:${port}`,
    getToken: async () => user.token,
    // Instrumentation as apps write it: the Request alone, its own signal all that follows the call's.
    fetch: (request) => globalThis.fetch(request),
  });

  const controller = new AbortController();
  const listing = todo.listTasks(user.id, {}, { signal: controller.signal });
  const creating = todo.createTask(user.id, { title: "Never answered" }, { signal: controller.signal });
  const subscription = todo.subscribe(user.id, () => {});
  // And a stream the API opened, which goes on sending heartbeats until something ends it: through
  // a relay whose connections end with the test, so that a stream close() missed cannot outlive it.
  const api = new URL(baseUrl);
  const relay = createServer((client) => {
    const upstream = connect(Number(api.port), api.hostname);
    held.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    for (const [one, other] of [[client, upstream], [upstream, client]] as const) {
      one.on("error", () => other.destroy());
      one.on("close", () => other.destroy());
    }
  });
  await new Promise<void>((resolve) => relay.listen(0, "127.0.0.1", resolve));
  t.after(() => relay.close());
  let live = () => {};
  const isLive = new Promise<void>((resolve) => (live = resolve));
  const streaming = createTodoClient({
    baseUrl: `http://127.0.0.1:${(relay.address() as AddressInfo).port}`,
    getToken: async () => user.token,
    fetch: (request) => globalThis.fetch(request),
  }).subscribe(user.id, live);
  await isLive;
  await collectGarbage();
  controller.abort();

  for (const call of [listing, creating]) {
    assert.equal(await stuck(call.then(() => "answered", (error: Error) => error.name)), "AbortError");
  }
  assert.equal(await stuck(subscription.close().then(() => "closed")), "closed");
  assert.equal(await stuck(streaming.close().then(() => "closed")), "closed");
});

/** A server that takes connections and answers nothing: only a call's signal can end a call to it. */
async function silentServer(t: TestContext): Promise<{ port: number; held: Set<Socket> }> {
  const held = new Set<Socket>();
  const silent = createServer((socket) => held.add(socket));
  await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
  t.after(() => (held.forEach((socket) => socket.destroy()), silent.close()));
  return { port: (silent.address() as AddressInfo).port, held };
}

/** Collects garbage (node runs these tests with --expose-gc), as often as Node's fetch needs to lose
 * what it holds weakly (nodejs/node#55428). */
async function collectGarbage(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, "node runs these tests with --expose-gc (tests/test_typescript_client.py)");
  for (let i = 0; i < 3; i++) (gc(), await new Promise((resolve) => setTimeout(resolve, 20)));
}

/** What a call came to, or "never ended" if nothing ended it: the test fails rather than waiting forever. */
function stuck<T>(promise: Promise<T>): Promise<T | string> {
  return Promise.race([promise, new Promise<string>((resolve) => setTimeout(() => resolve("never ended"), 5000))]);
}
