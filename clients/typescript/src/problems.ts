/**
 * The problem documents (RFC 9457) the API answers with, typed per operation from what its OpenAPI
 * document lists (schema.ts), so that an app's `switch (error.type)` can cover every case and
 * TypeScript can say which one it misses. Methods (index.ts) and streams (events.ts) alike.
 */
import type { components, operations } from "./schema.js";

export type Problem = components["schemas"]["Problem"];

/** The problem documents the OpenAPI document lists for an operation's answers, each with the types
 * its status may carry (the `enum` of its `type`). */
type ListedProblem<Operation extends keyof operations> = ProblemContent<
  operations[Operation]["responses"][keyof operations[Operation]["responses"]]
>;
type ProblemContent<Answer> = Answer extends { content: { "application/problem+json": infer Listed } } ? Listed : never;

/**
 * An error that no answer of the operation lists: the API's own bug (500 `internal-error`, or
 * `http-error` for a status it has no type of its own for), or an answer without the API's problem
 * document (a proxy's error page, an empty 502, the server's own 431, another server's problem
 * document), which gets one made from its status, as RFC 9457 describes for `about:blank`: `title`
 * is the status text, `detail` the body's text (or the title when it had none).
 */
export type UnlistedProblem = Problem & {
  type: "about:blank" | "urn:todo-api:problem:internal-error" | "urn:todo-api:problem:http-error";
};

/** Every error an operation can give: the problems its answers list, or an unlisted one. */
export type ProblemOf<Operation extends keyof operations> = ListedProblem<Operation> | UnlistedProblem;

/** What every problem type the API sends starts with (api/http/problems.py). */
const API_PROBLEM_TYPE = "urn:todo-api:problem:";

/** Whether a body read as JSON is one of the API's problem documents: one whose type is not the
 * API's (a gateway's own), or that is no problem document at all, is no answer of the API's. */
export function isApiProblem(body: unknown): body is Problem {
  const candidate = body as Partial<Problem> | null | undefined;
  const ours = typeof candidate?.type === "string" && candidate.type.startsWith(API_PROBLEM_TYPE);
  return ours && typeof candidate.status === "number";
}
