/**
 * What every test file needs of the live API that tests/test_typescript_client.py starts on a real
 * Postgres before running `node --test dist/test/`:
 *   TODO_API_URL    the API's base URL
 *   TODO_API_USERS  a JSON array of {"id", "token", "expiredToken"}: one user for each test, so
 *                   the tests neither see each other's tasks nor depend on their order.
 */
import { createTodoClient, type TodoClientOptions } from "../src/index.js";

export interface TestUser {
  id: string;
  token: string;
  expiredToken: string;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through tests/test_typescript_client.py`);
  return value;
}

export const baseUrl = required("TODO_API_URL");
const users: TestUser[] = JSON.parse(required("TODO_API_USERS"));

/** A user no other test has. node runs each test file in a process of its own, so one file takes
 * its users from the start of TODO_API_USERS and the other from the end: never the same one. */
export function takeUser(from: "start" | "end"): TestUser {
  const user = from === "start" ? users.shift() : users.pop();
  if (!user) throw new Error("TODO_API_USERS has fewer users than there are tests");
  return user;
}

export function clientFor(user: TestUser, options: Partial<TodoClientOptions> = {}) {
  return createTodoClient({ baseUrl, getToken: async () => user.token, ...options });
}
