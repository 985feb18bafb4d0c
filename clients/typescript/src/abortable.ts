/**
 * Waits that end as soon as a signal aborts, rejecting with its reason (as fetch does), and that
 * leave no listener on the signal once they are over: a subscription's signal lives through every
 * reconnect, and a listener left by each wait would keep one closure per reconnect for its life.
 */

/** Waits `ms`. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    signal?.throwIfAborted();
    const abort = () => (clearTimeout(timer), reject(signal?.reason));
    const timer = setTimeout(() => (signal?.removeEventListener("abort", abort), resolve()), ms);
    signal?.addEventListener("abort", abort, { once: true });
  });
}

/** What `promise` settles to. */
export function untilAborted<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(signal.reason);
    signal.addEventListener("abort", abort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", abort));
  });
}

/**
 * fetch's answer, even from a fetch that no longer follows the signal: one passed in that drops its
 * `init` relies on the Request's own signal, which Node's fetch can lose once garbage is collected
 * (nodejs/node#55428). An answer that comes after the abort has its body cancelled, so that it holds
 * no connection (nor a stream's place on the server).
 */
export async function answerUntilAborted(answer: Promise<Response>, signal?: AbortSignal): Promise<Response> {
  try {
    return await untilAborted(answer, signal);
  } catch (error) {
    if (signal?.aborted) answer.then((late) => late.body?.cancel(), () => {}).catch(() => {});
    throw error;
  }
}
