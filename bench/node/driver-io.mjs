/**
 * The driver side of the orchestrator's line protocol, for Node drivers (the
 * twin of bench/harness/drivers/channel.py and timeline.py).
 *
 * One JSON command per stdin line (`{"op": NAME, ...}`), one JSON answer per
 * stdout line: `{"ok": true, ...result}` or `{"ok": false, "error"}`; `exit`
 * ends the process. console.* is pointed at stderr first, so nothing but
 * answers reaches stdout.
 */

import { createInterface } from 'node:readline';

for (const name of ['log', 'info', 'debug', 'warn']) console[name] = console.error;

/** Serve `handlers` (op name → async function(params) → result object) until `exit`. */
export function serve(handlers, onExit) {
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  let queue = Promise.resolve();
  lines.on('line', (line) => {
    queue = queue.then(() => answer(handlers, JSON.parse(line), onExit));
  });
  lines.on('close', () => {
    queue = queue.then(() => finish(onExit));
  });
}

async function answer(handlers, { op, ...params }, onExit) {
  if (op === 'exit') return finish(onExit);
  let reply;
  try {
    reply = { ok: true, ...(await handlers[op](params)) };
  } catch (error) {
    console.error(error);
    reply = { ok: false, error: `${op}: ${error?.message ?? error}` };
  }
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}

async function finish(onExit) {
  await onExit();
  process.stdout.write(`${JSON.stringify({ ok: true })}\n`);
  process.exit(0);
}

/** Times one generation from the caller's side; fields as in timeline.py. */
export class Timeline {
  start = performance.now();
  first = 0;
  last = 0;
  chunks = 0;
  parts = [];

  text(piece) {
    if (!piece) return;
    const now = performance.now();
    if (this.chunks === 0) this.first = now;
    this.last = now;
    this.chunks += 1;
    this.parts.push(piece);
  }

  result(completionTokens, promptTokens, server = null) {
    const end = performance.now();
    const span = this.last - this.first;
    return {
      ttftMs: this.chunks ? this.first - this.start : null,
      e2eMs: end - this.start,
      decodeTps: completionTokens > 1 && span > 0 ? ((completionTokens - 1) * 1000) / span : null,
      completionTokens,
      promptTokens,
      chunks: this.chunks,
      chunkSpanMs: span,
      text: this.parts.join(''),
      server,
    };
  }
}
