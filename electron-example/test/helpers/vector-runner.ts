/**
 * Replays one protocol vector file (../protocol/vectors, format in its README)
 * through the client's ProcessTransport and framing, with the same rules as
 * the Python runner tests/vectors.py: exact-key pattern matching, stream
 * invariants checked on every chunk, a clean exit after stdin closes, and no
 * message left unmatched. Every wait is bounded.
 */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

import { type ExitInfo, type LLMServiceError, ProcessTransport } from '../../client/src/index.js';
import { devSidecarCommand } from './sidecar.js';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

const WAIT_MS = 30_000;
const EXIT_MS = 5_000;

const KINDS: Readonly<Record<string, (value: Json) => boolean>> = {
  $string: (v) => typeof v === 'string',
  $number: (v) => typeof v === 'number',
  // JSON.parse cannot tell 1.0 from 1, so a whole float counts as an integer here (Python's runner can).
  $integer: (v) => Number.isInteger(v),
  $boolean: (v) => typeof v === 'boolean',
  $object: (v) => isObject(v),
  $array: (v) => Array.isArray(v),
  $any: () => true,
};

function isObject(value: Json | undefined): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** True if `value` matches `pattern` under the vector rules. */
export function matches(pattern: Json, value: Json): boolean {
  if (typeof pattern === 'string' && pattern in KINDS) return KINDS[pattern]?.(value) ?? false;
  if (Array.isArray(pattern)) {
    return (
      Array.isArray(value) && pattern.length === value.length && pattern.every((p, i) => matches(p, value[i] ?? null))
    );
  }
  if (isObject(pattern)) {
    if (!isObject(value)) return false;
    const keys = Object.keys(pattern);
    return (
      keys.length === Object.keys(value).length &&
      keys.every((k) => k in value && matches(pattern[k] ?? null, value[k] ?? null))
    );
  }
  return pattern === value;
}

export function substitute(value: Json, placeholders: Readonly<Record<string, string>>): Json {
  if (typeof value === 'string') return placeholders[value] ?? value;
  if (Array.isArray(value)) return value.map((item) => substitute(item, placeholders));
  if (isObject(value))
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, substitute(v, placeholders)]));
  return value;
}

export async function runVector(file: string, placeholders: Readonly<Record<string, string>>): Promise<void> {
  const steps = readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => substitute(JSON.parse(line) as Json, placeholders) as JsonObject);
  const first = steps[0];
  const args =
    first !== undefined && Array.isArray(first['sidecarArgs']) ? (steps.shift()?.['sidecarArgs'] as string[]) : [];
  const run = new VectorRun(args);
  await run.start();
  try {
    for (const [number, step] of steps.entries()) {
      try {
        await run.step(step);
      } catch (error) {
        throw new Error(`step ${number + 1} ${JSON.stringify(step).slice(0, 300)}: ${(error as Error).message}`);
      }
    }
    await run.finish();
  } finally {
    await run.transport.close({ force: true });
  }
}

class VectorRun {
  readonly transport: ProcessTransport;
  private readonly received: Json[] = [];
  private wake: (() => void) | undefined;
  private readonly streams = new Map<Json, JsonObject[]>();
  private readonly streamIds = new Set<Json>();
  /** loadProgress values per loadModel request id, until its response. */
  private readonly progress = new Map<Json, number[]>();
  private readonly loadIds = new Set<Json>();
  private readonly badLines: LLMServiceError[] = [];
  private exit: ExitInfo | undefined;

  constructor(args: readonly string[]) {
    this.transport = new ProcessTransport({ ...devSidecarCommand(args), logger: () => {}, closeGraceMs: EXIT_MS });
    this.transport.onmessage = (message) => {
      this.received.push(message as Json);
      this.wake?.();
    };
    this.transport.onerror = (error) => this.badLines.push(error);
    this.transport.onclose = ({ exit }) => {
      this.exit = exit;
      this.wake?.();
    };
  }

  start(): Promise<void> {
    return this.transport.start();
  }

  async step(step: JsonObject): Promise<void> {
    if ('send' in step) {
      const message = step['send'] ?? null;
      if (isObject(message) && message['method'] === 'promptStream' && 'id' in message)
        this.streamIds.add(message['id'] ?? null);
      if (isObject(message) && message['method'] === 'loadModel' && 'id' in message)
        this.loadIds.add(message['id'] ?? null);
      await this.transport.send(message);
    } else if (typeof step['sendRaw'] === 'string') {
      await this.transport.write(new TextEncoder().encode(`${step['sendRaw']}\n`));
    } else if (typeof step['sendBase64'] === 'string') {
      await this.transport.write(Buffer.concat([Buffer.from(step['sendBase64'], 'base64'), Buffer.from('\n')]));
    } else if ('expect' in step) {
      const message = await this.next();
      assert.ok(matches(step['expect'] ?? null, message), `got ${JSON.stringify(message)}`);
    } else if (Array.isArray(step['expectAnyOrder'])) {
      const remaining = [...step['expectAnyOrder']];
      for (let count = remaining.length; count > 0; count--) {
        const message = await this.next();
        const found = remaining.findIndex((pattern) => matches(pattern, message));
        assert.ok(found !== -1, `got ${JSON.stringify(message)}, expected one of ${JSON.stringify(remaining)}`);
        remaining.splice(found, 1);
      }
    } else if (isObject(step['expectChunks'])) {
      const { requestId = null, final = null } = step['expectChunks'];
      const chunks = this.streams.get(requestId) ?? [];
      assert.ok(chunks.at(-1)?.['isFinal'] === true, `stream not complete: ${JSON.stringify(chunks)}`);
      assert.ok(matches(final, chunks.at(-1) ?? null), `final chunk ${JSON.stringify(chunks.at(-1))}`);
    } else {
      assert.fail(`unknown step ${JSON.stringify(step)}`);
    }
  }

  /** Close stdin: the sidecar must exit 0 within 5 s, leaving no unmatched message. */
  async finish(): Promise<void> {
    const started = Date.now();
    await this.transport.close();
    assert.ok(Date.now() - started < EXIT_MS, 'the sidecar did not exit within 5 s of stdin closing');
    assert.deepEqual([this.exit?.exitCode, this.exit?.signal], [0, null], `exit: ${JSON.stringify(this.exit)}`);
    const unmatched = this.received.splice(0).filter((message) => this.absorb(message));
    assert.deepEqual(unmatched, [], 'unmatched messages');
    assert.deepEqual(
      this.badLines.map((e) => e.message),
      [],
      'the sidecar wrote lines that are not protocol',
    );
  }

  /** The next message that is not a stream chunk or load progress, checking their invariants on the way. */
  private async next(): Promise<Json> {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const message = this.received.shift();
      if (message !== undefined) {
        if (this.absorb(message)) return message;
        continue;
      }
      assert.ok(this.exit === undefined, `the sidecar exited: ${JSON.stringify(this.exit)}`);
      const left = deadline - Date.now();
      assert.ok(left > 0, `no awaited message from the sidecar within ${WAIT_MS} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => (clearTimeout(timer), resolve());
      });
    }
  }

  /** Record a chunk or a load's progress (false), or check a response against them (true). */
  private absorb(message: Json): boolean {
    if (isObject(message) && message['method'] === 'loadProgress' && isObject(message['params'])) {
      const params = message['params'];
      const values = this.progress.get(params['requestId'] ?? null) ?? [];
      this.progress.set(params['requestId'] ?? null, values);
      const progress = params['progress'];
      assert.ok(typeof progress === 'number', `progress is not a number: ${JSON.stringify(params)}`);
      assert.ok(
        values.length === 0 || progress > (values.at(-1) ?? 0),
        `progress went back: ${JSON.stringify(params)}`,
      );
      values.push(progress);
      return false;
    }
    if (isObject(message) && message['method'] === 'streamChunk' && isObject(message['params'])) {
      const params = message['params'];
      const chunks = this.streams.get(params['requestId'] ?? null) ?? [];
      this.streams.set(params['requestId'] ?? null, chunks);
      assert.ok(chunks.at(-1)?.['isFinal'] !== true, `chunk after the final one: ${JSON.stringify(params)}`);
      assert.equal(params['index'], chunks.length, `index gap: ${JSON.stringify(params)}`);
      chunks.push(params);
      return false;
    }
    for (const item of Array.isArray(message) ? message : [message]) {
      if (isObject(item) && this.streamIds.has(item['id'] ?? null) && !('error' in item)) {
        const chunks = this.streams.get(item['id'] ?? null) ?? [];
        assert.ok(chunks.at(-1)?.['isFinal'] === true, `response before the final chunk: ${JSON.stringify(item)}`);
      }
      if (isObject(item) && this.loadIds.has(item['id'] ?? null)) {
        this.loadIds.delete(item['id'] ?? null);
        const values = this.progress.get(item['id'] ?? null) ?? [];
        this.progress.delete(item['id'] ?? null);
        if ('result' in item) assert.ok(values.at(-1) === 1, `loadModel answered before loadProgress 1: ${values}`);
      }
    }
    return true;
  }
}
