/**
 * The app's `getToken`, as every request and every stream connection calls it. What goes wrong
 * there is the app's (not signed in, its auth server down, a bug), never the network's: a method
 * rejects with it as thrown and sends nothing, not even again; a subscription tells `onError` and
 * asks getToken again after its backoff.
 */
import { untilAborted } from "./abortable.js";

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
 * A token for one request or stream connection: `refused` is the token the API refused (a 401, or its
 * 403 for another user's path), undefined to ask for the token getToken keeps. Rejects with what
 * getToken throws, or with `signal`'s reason as soon as it aborts.
 */
export type TokenSource = (refused: string | undefined, signal?: AbortSignal) => Promise<string>;

/**
 * getToken as one client calls it. Calls that need the same token share one answer of getToken:
 * - every request and stream refused with the same token takes the one fresh token asked for because
 *   of it: when a token expires under a page's parallel calls (or calls a browser holds back, six to
 *   a host, and sends with the token they were given), getToken is asked once with `fresh: true`,
 *   not once per call, each a round trip to the auth server (Better Auth's /api/auth/token) that its
 *   rate limit may refuse;
 * - calls made while getToken is asked for the token it keeps wait on that answer: a page's first
 *   render (its lists, a create, a stream, before any token is kept) asks once, not once per call.
 *   Once it has answered, the next call asks again, so a token the app changed since (signed out,
 *   another account) is the one sent.
 */
export function tokenSource(getToken: GetToken): TokenSource {
  let kept: SharedToken | undefined;
  let refresh: SharedToken | undefined;
  return async (refused, signal) => {
    signal?.throwIfAborted();
    if (refused === undefined) {
      if (!kept?.answers(undefined)) kept = new SharedToken(getToken, undefined);
      return kept.join(signal);
    }
    if (!refresh?.answers(refused)) refresh = new SharedToken(getToken, refused);
    return refresh.join(signal);
  };
}

/** One answer of getToken for every caller that needs it: a fresh token, asked for because `refused`
 * was refused, or (`refused` undefined) the token getToken keeps. */
class SharedToken {
  readonly #refused: string | undefined;
  // getToken's signal: aborted once every caller waiting has given up (not when one of them does,
  // which would fail the others' token too), so that getToken can cancel its own fetch.
  readonly #controller = new AbortController();
  readonly #token: Promise<string>;
  #settled = false;
  #failed = false;
  // A caller gave up waiting (its signal aborted, a timeout say): the token may never come.
  #givenUpOn = false;
  #given: string | undefined;
  #waiting = 0;
  #withoutSignal = false;

  constructor(getToken: GetToken, refused: string | undefined) {
    this.#refused = refused;
    this.#token = tokenFrom(getToken, refused !== undefined, this.#controller.signal);
    this.#token.then(
      (token) => ((this.#settled = true), (this.#given = token)),
      () => ((this.#settled = true), (this.#failed = true)),
    );
  }

  /** Whether a caller refused `refused` (undefined: refused nothing) may take this token rather than
   * ask for another: not once getToken failed to give one (it may give one now), nor once a caller
   * gave up waiting on it (a getToken that never settles would otherwise hold every later call, their
   * own timeouts included). A fresh token is not one when getToken gave the very token refused; the
   * token getToken keeps is asked for anew once it has come. */
  answers(refused: string | undefined): boolean {
    if (refused !== this.#refused || this.#failed || this.#givenUpOn) return false;
    return refused === undefined ? !this.#settled : this.#given !== refused;
  }

  join(signal?: AbortSignal): Promise<string> {
    if (!signal) this.#withoutSignal = true;
    else {
      this.#waiting++;
      const giveUp = () => {
        if (this.#settled) return;
        this.#givenUpOn = true;
        if (--this.#waiting === 0 && !this.#withoutSignal) this.#controller.abort(signal.reason);
      };
      signal.addEventListener("abort", giveUp, { once: true });
      // A subscription's signal lives on past many refreshes: leave none of their listeners on it.
      const forget = () => signal.removeEventListener("abort", giveUp);
      this.#token.then(forget, forget);
    }
    return untilAborted(this.#token, signal);
  }
}

/**
 * The token getToken resolves to, given up as soon as `signal` aborts (with its reason): a getToken
 * that never settles holds nothing once its request is cancelled or its subscription closed.
 */
async function tokenFrom(getToken: GetToken, fresh: boolean, signal?: AbortSignal): Promise<string> {
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
