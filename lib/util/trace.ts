/**
 * cartd's OpenTelemetry spans, through `@opentelemetry/api`: with `OTEL_DENO=true`, Deno's
 * built-in OpenTelemetry backs the API and exports the spans by OTLP as the standard `OTEL_*`
 * variables say (docs/operations.md, "Traces"); without it, every call here is the API's no-op.
 *
 * The spans (each with the cart's `cartd.uid` and `cartd.cart`):
 *
 * - `cartd.stage_file`: one file fetched from the archive, verified and written (worker);
 * - `cartd.recall`: one file's tape recall, from its stage request until it is on disk (worker);
 * - `cartd.download`: a cart's download, until its body is sent or cut (API).
 *
 * @example
 * ```ts
 * import { startSpan } from "./trace.ts";
 * const span = startSpan("cartd.recall", { "cartd.uid": "mycart" });
 * span.end(); // or span.end(error)
 * ```
 * @module
 */
import { type Span, SpanStatusCode, trace } from "@opentelemetry/api";

/** The attributes of a span: names such as `cartd.uid`, and their values. */
export type SpanAttributes = Record<string, string | number | boolean>;

/** The tracer of every cartd span. */
const tracer = trace.getTracer("cartd");

/** A span begun by {@linkcode startSpan}. */
export interface CartdSpan {
  /** Adds attributes (what became known meanwhile). */
  set(attributes: SpanAttributes): void;
  /** Ends the span (once; later calls do nothing), failed when `error` is given. */
  end(error?: unknown): void;
}

/** Begins a span named `name` with `attributes`, to be ended by the caller. */
export function startSpan(name: string, attributes: SpanAttributes): CartdSpan {
  const span: Span = tracer.startSpan(name, { attributes });
  let open = true;
  return {
    set: (more) => void span.setAttributes(more),
    end(error?: unknown) {
      if (!open) return;
      open = false;
      if (error !== undefined) {
        span.recordException(error instanceof Error ? error : String(error));
        span.setStatus({
          code: SpanStatusCode.ERROR,
          message: error instanceof Error ? error.message : String(error),
        });
      }
      span.end();
    },
  };
}

/** Runs `work` inside a span named `name`, which ends when it settles (failed if it throws). */
export async function traced<T>(
  name: string,
  attributes: SpanAttributes,
  work: (span: CartdSpan) => Promise<T>,
): Promise<T> {
  const span = startSpan(name, attributes);
  try {
    const result = await work(span);
    span.end();
    return result;
  } catch (error) {
    span.end(error);
    throw error;
  }
}
