/**
 * Reads Retry-After (RFC 9110, section 10.2.3) as the create retries and the stream's reconnects
 * use it. The API sends whole seconds; something in front of it may send an HTTP-date, or a value
 * that is neither, which is no answer at all rather than a wait of zero.
 */

/** IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) and the obsolete RFC 850 form, both in GMT. */
const HTTP_DATE = /^[A-Za-z]{3,9}, [0-9A-Za-z -]+ \d{2}:\d{2}:\d{2} GMT$/;

/** How long the answer asks to wait, in milliseconds from now; undefined when it does not say. */
export function retryAfterMs(response: Response): number | undefined {
  const value = response.headers.get("Retry-After")?.trim() ?? "";
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const date = HTTP_DATE.test(value) ? Date.parse(value) : NaN;
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}
