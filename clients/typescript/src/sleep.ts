/**
 * Waits `ms`, or rejects with the signal's reason as soon as it aborts. Either way it leaves no
 * listener on the signal: a subscription's signal lives through every reconnect's wait, and a
 * listener left by each would keep one closure per reconnect for the life of the subscription.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    signal?.throwIfAborted();
    const abort = () => (clearTimeout(timer), reject(signal?.reason));
    const timer = setTimeout(() => (signal?.removeEventListener("abort", abort), resolve()), ms);
    signal?.addEventListener("abort", abort, { once: true });
  });
}
