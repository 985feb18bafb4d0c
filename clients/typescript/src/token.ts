/**
 * The app's `getToken`, as every request and every stream connection calls it. What goes wrong
 * there is the app's (not signed in, its auth server down, a bug), never the network's: it reaches
 * the caller as thrown and no retry loop of this client sends the request again because of it.
 */

/** A JWT whose `sub` is the user. `fresh: true` when the API refused the last one; `signal` aborts
 * with the request (or subscription) it is for: hand it on to your own fetch of the token. */
export type GetToken = (options: { fresh: boolean; signal?: AbortSignal }) => Promise<string>;

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
    const token: unknown = await untilAborted(getToken({ fresh, signal }), signal);
    if (typeof token !== "string" || !BEARER_TOKEN.test(token)) {
      // Its value is not shown: it may be a secret all the same.
      const what = typeof token === "string" ? "a string that is not a bearer token" : token === null ? "null" : typeof token;
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
