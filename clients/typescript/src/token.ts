/**
 * The app's `getToken`, as every request and every stream connection calls it. What goes wrong
 * there is the app's (not signed in, its auth server down, a bug), never the network's: a method
 * rejects with it as thrown and sends nothing, not even again; a subscription tells `onError` and
 * asks getToken again after its backoff.
 */

/** A JWT whose `sub` is the user. `fresh: true` when the API refused the last one (a 401, or its 403
 * for a path of another user than the last token's: `OTHER_USERS_PATH`); `signal` aborts
 * with the request (or subscription) it is for: hand it on to your own fetch of the token. */
export type GetToken = (options: { fresh: boolean; signal?: AbortSignal }) => Promise<string>;

/**
 * The problem type of the API's 403: the path names another user than the token. That token may be
 * one of the account signed in before (Better Auth's multi-session plugin switched accounts, or the
 * app kept it past a sign-out), so a fresh token is asked for once; a fresh token's 403 is the answer,
 * a path of another user. A 403 from something in front of the API (a WAF's page) says nothing of
 * the token.
 */
export const OTHER_USERS_PATH = "urn:todo-api:problem:forbidden";

/** A bearer token's syntax (RFC 6750, b64token): what a JWT always is, and all a header can carry. */
const BEARER_TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

// What getToken threw or resolved to that is not a token. A TypeError among them (a bug in the
// app's getToken) must not pass for fetch's TypeError of a dropped connection, which a create retries.
const tokenFailures = new WeakSet<object>();

/** Whether an error came from getToken rather than from sending the request. */
export function isTokenFailure(error: unknown): boolean {
  return typeof error === "object" && error !== null && tokenFailures.has(error);
}

/**
 * The token getToken resolves to, given up as soon as `signal` aborts (with its reason): a getToken
 * that never settles holds nothing once its request is cancelled or its subscription closed.
 */
export async function tokenFrom(getToken: GetToken, fresh: boolean, signal?: AbortSignal): Promise<string> {
  try {
    signal?.throwIfAborted();
    const resolved: unknown = await untilAborted(getToken({ fresh, signal }), signal);
    // White space around it (a token read from a file) is dropped, as a header's value drops it.
    const token = typeof resolved === "string" ? resolved.trim() : resolved;
    if (typeof token !== "string" || !BEARER_TOKEN.test(token)) {
      // Its value is not shown: it may be a secret all the same.
      const what =
        typeof token === "string" ? "a string that is not a bearer token" : token === null ? "null" : typeof token;
      throw new TypeError(`getToken resolved to ${what}, not a JWT`);
    }
    return token;
  } catch (error) {
    if (typeof error === "object" && error !== null && !signal?.aborted) tokenFailures.add(error);
    throw error;
  }
}

function untilAborted<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(signal.reason);
    signal.addEventListener("abort", abort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", abort));
  });
}
