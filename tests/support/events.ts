/**
 * A client of cartd's event streams (`GET /{uid}/events`) for tests: reads the server-sent
 * events of a cart as a browser's `EventSource` would parse them.
 *
 * @module
 */

/** One server-sent event as a client reads it. */
export interface SseEvent {
  id: string | null;
  event: string;
  data: Record<string, unknown>;
}

/**
 * Reads the event stream of `uid` until it ends (or `until` says to stop); returns its events,
 * the answer's status and content type. Fails after `timeoutMs`.
 */
export async function readEvents(
  url: string,
  uid: string,
  options: {
    lastEventId?: string;
    until?: (events: SseEvent[]) => boolean;
    timeoutMs?: number;
  } = {},
): Promise<{ status: number; type: string | null; events: SseEvent[]; ended: boolean }> {
  const headers: Record<string, string> = {};
  if (options.lastEventId) headers["Last-Event-ID"] = options.lastEventId;
  const signal = AbortSignal.timeout(options.timeoutMs ?? 30_000);
  const res = await fetch(`${url}${encodeURIComponent(uid)}/events`, { headers, signal });
  const type = res.headers.get("content-type");
  const events: SseEvent[] = [];
  if (res.status !== 200 || !res.body) {
    await res.body?.cancel();
    return { status: res.status, type, events, ended: true };
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return { status: res.status, type, events, ended: true };
    text += value;
    let cut;
    while ((cut = text.indexOf("\n\n")) >= 0) {
      const block = text.slice(0, cut);
      text = text.slice(cut + 2);
      const fields = new Map<string, string>();
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        fields.set(line.slice(0, colon), line.slice(colon + 1).trimStart());
      }
      if (!fields.has("data")) continue;
      events.push({
        id: fields.get("id") ?? null,
        event: fields.get("event") ?? "message",
        data: JSON.parse(fields.get("data")!),
      });
      if (options.until?.(events)) {
        await reader.cancel();
        return { status: res.status, type, events, ended: false };
      }
    }
  }
}
