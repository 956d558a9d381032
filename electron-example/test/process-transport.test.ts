/** The process transport with small node children standing in for the sidecar. */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { type CloseEvent, type LLMServiceError, ProcessTransport } from '../client/src/index.js';
import { type Recorded, recordingLogger } from './helpers/sidecar.js';

function nodeChild(script: string, options: { closeGraceMs?: number; stderrTailLines?: number } = {}) {
  const recorder = recordingLogger();
  const waiters: [string, () => void][] = [];
  const logger = (level: Recorded['level'], message: string): void => {
    recorder.logger(level, message);
    for (const [text, resolve] of waiters) if (message.endsWith(text)) resolve();
  };
  /** Resolves when the child's stderr has a line ending with `text`. */
  const logged = (text: string): Promise<void> => new Promise((resolve) => waiters.push([text, resolve]));
  const entries = recorder.entries;
  const transport = new ProcessTransport({ command: process.execPath, args: ['-e', script], logger, ...options });
  const messages: unknown[] = [];
  const errors: LLMServiceError[] = [];
  transport.onmessage = (message) => messages.push(message);
  transport.onerror = (error) => errors.push(error);
  const closed = new Promise<CloseEvent>((resolve) => {
    transport.onclose = resolve;
  });
  return { transport, messages, errors, closed, entries, logged };
}

test('messages split across writes, a non-JSON line and stderr: the JSON arrives, the rest is reported', async () => {
  const { transport, messages, errors, closed, entries } = nodeChild(`
    process.stdout.write('{"a":"\\u20ac');
    setTimeout(() => {
      process.stdout.write('"}\\nnot json\\r\\n{"b":2}\\n');
      process.stderr.write('sidecar WARNING x: careful\\nplain line\\n');
    }, 20);
  `);
  await transport.start();
  const event = await closed;
  assert.deepEqual(messages, [{ a: '€' }, { b: 2 }]);
  assert.deepEqual(
    errors.map((e) => [e.code, e.message]),
    [['PROTOCOL_ERROR', 'The sidecar broke the protocol: a stdout line is not JSON: "not json".']],
  );
  assert.deepEqual(event, {
    expected: false,
    exit: { exitCode: 0, signal: null, stderrTail: ['sidecar WARNING x: careful', 'plain line'] },
  });
  assert.deepEqual(
    entries.filter((e) => e.message.startsWith('sidecar: ')).map((e) => e.level),
    ['warn', 'debug'],
  );
});

test('the stderr tail keeps only the last lines', async () => {
  const { transport, closed } = nodeChild(`for (let i = 0; i < 100; i++) console.error('line ' + i);`, {
    stderrTailLines: 3,
  });
  await transport.start();
  assert.deepEqual((await closed).exit.stderrTail, ['line 97', 'line 98', 'line 99']);
});

test('close ends stdin first: a child that exits on EOF is not signalled', async () => {
  const { transport, closed } = nodeChild(`process.stdin.resume(); process.stdin.on('end', () => process.exit(0));`);
  await transport.start();
  await transport.close();
  assert.deepEqual((await closed).exit.signal, null);
  assert.equal((await closed).expected, true);
});

test('close escalates to SIGTERM, then SIGKILL, for a child that ignores EOF and SIGTERM', async () => {
  const { transport, closed, logged } = nodeChild(
    `process.on('SIGTERM', () => console.error('ignoring SIGTERM')); setInterval(() => {}, 1000); console.error('ready');`,
    { closeGraceMs: 200 },
  );
  const ready = logged('ready');
  await transport.start();
  await ready;
  const started = Date.now();
  await transport.close();
  const event = await closed;
  assert.equal(event.exit.signal, 'SIGKILL');
  assert.ok(event.exit.stderrTail.includes('ignoring SIGTERM'));
  assert.ok(Date.now() - started < 2000);
  await assert.rejects(transport.send({}), { code: 'CLOSED' });
});

test('a child whose own child holds the pipes: its last message arrives, and the close comes soon after its exit', async () => {
  const { transport, messages, closed } = nodeChild(`
    const holder = require('node:child_process').spawn(process.execPath, ['-e', 'setTimeout(() => {}, 5000)'], {
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    process.stdout.write(JSON.stringify({ holder: holder.pid }) + '\\n');
    process.exit(3);
  `);
  let lastMessageAt = 0;
  const onmessage = transport.onmessage;
  transport.onmessage = (message) => {
    lastMessageAt = Date.now();
    onmessage?.(message);
  };
  await transport.start();
  const event = await closed;
  const closedAfterMs = Date.now() - lastMessageAt;
  const holder = (messages[0] as { holder: number } | undefined)?.holder;
  if (holder !== undefined) process.kill(holder, 'SIGKILL');
  assert.equal(event.exit.exitCode, 3);
  assert.equal(messages.length, 1, 'what the child wrote before it exited is delivered');
  // Pending calls reject on the close: well within a second of the exit, though the pipes stay open.
  assert.ok(closedAfterMs < 600, `closed ${closedAfterMs} ms after the last message`);
});

test('a missing command fails to start with SPAWN_FAILED', async () => {
  const transport = new ProcessTransport({ command: '/nonexistent/sidecar', logger: () => {} });
  await assert.rejects(
    transport.start(),
    (error: LLMServiceError) => error.code === 'SPAWN_FAILED' && /nonexistent/.test(error.message),
  );
});

test('the child learns our pid from LLAMA_SIDECAR_PARENT_PID, so it can outlive us by no more than a moment', async () => {
  const { transport, messages, closed } = nodeChild(
    `process.stdout.write(JSON.stringify({ parent: process.env.LLAMA_SIDECAR_PARENT_PID }) + '\\n');`,
  );
  await transport.start();
  await closed;
  assert.deepEqual(messages, [{ parent: String(process.pid) }]);
});
