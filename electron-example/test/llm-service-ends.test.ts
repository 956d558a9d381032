/**
 * LlmService, against the fake sidecar: how calls end in the corners — a prompt cancelled before
 * it was sent, a dispose during a restart, a stream that stalls, a model whose reload kills the
 * sidecar, a graceful dispose with a stream running.
 */

import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import {
  CancelTimeoutError,
  DEFAULT_STREAM_IDLE_TIMEOUT_MS,
  type GenerationResult,
  type LlmChunk,
  type LlmService,
  LLMServiceError,
  StreamIdleTimeoutError,
} from '../client/src/index.js';
import { fakeService, fakeWithMarker } from './helpers/fake-service.js';
import { running, until } from './helpers/sidecar.js';

/** Each test ends in time, passed or failed: a call that never settles is what they look for. */
const BOUNDED = { timeout: 20_000 };
/** The methods and ids the fake received, without its pid. */
const calls = (received: string[]): string[] => received.map((line) => line.split(' ').slice(1).join(' '));
/** The distinct pids of the fakes, in order of their first line. */
const pids = (received: string[]): string[] => [...new Set(received.map((line) => line.split(' ')[0] ?? ''))];
/** What the fake with `pid` received: its methods. */
const methodsOf = (received: string[], pid: string | undefined): string[] =>
  received.filter((line) => line.startsWith(`${pid} `)).map((line) => line.split(' ')[1] ?? '');

/** A fresh marker path for the modes that take one. */
const marker = (): string => join(mkdtempSync(join(tmpdir(), 'fake-marker-')), 'loaded');

/** Kill the running fake and wait until the service has noticed. */
async function killSidecar(service: LlmService): Promise<void> {
  process.kill(service.sidecarPid ?? 0, 'SIGKILL');
  await until(() => service.sidecarPid === undefined, 5000, 'the kill being noticed');
}

/** What a prompt cancelled before it was sent resolves to. */
function assertCancelledUnsent(result: GenerationResult, chunks: readonly LlmChunk[]): void {
  assert.deepEqual(
    [result.text, result.finishReason, result.usage],
    ['', 'cancelled', { promptTokens: 0, completionTokens: 0 }],
  );
  assert.equal(chunks.length, 1, 'exactly one chunk');
  const [final] = chunks;
  assert.deepEqual([final?.content, final?.isFinal, final?.index, final?.finishReason], ['', true, 0, 'cancelled']);
  assert.deepEqual(final?.usage, result.usage);
}

describe('a prompt cancelled before its request was sent', () => {
  test(
    'cancelled straight after the call, while the sidecar starts or once it runs: resolved as cancelled, one final chunk, nothing sent',
    BOUNDED,
    async () => {
      const { service, received } = fakeService('stream');
      const starting: LlmChunk[] = [];
      const first = service.promptStream('hi', (chunk) => starting.push(chunk));
      assert.equal(first.cancel(), true);
      assertCancelledUnsent(await first, starting);
      await service.loadModel('/fake.gguf');
      const running: LlmChunk[] = [];
      const second = service.promptStream('hi', (chunk) => running.push(chunk));
      assert.equal(second.cancel(), true);
      assertCancelledUnsent(await second, running);
      const text = service.prompt('hi', { requestId: 'mine' });
      assert.equal(service.cancel('mine'), true);
      assert.equal(await text, '');
      // An already aborted signal: the same.
      const aborted: LlmChunk[] = [];
      assertCancelledUnsent(
        await service.promptStream('hi', (chunk) => aborted.push(chunk), { signal: AbortSignal.abort() }),
        aborted,
      );
      await service.dispose();
      assert.ok(!calls(received()).some((line) => line.startsWith('prompt')), 'no prompt was sent');
    },
  );

  test('cancelled during a restart backoff: resolved at once, without waiting for the sidecar', BOUNDED, async () => {
    const { service, received } = fakeService('stream', { restart: { initialDelayMs: 5000 } });
    await service.loadModel('/fake.gguf');
    await killSidecar(service);
    const chunks: LlmChunk[] = [];
    const handle = service.promptStream('hi', (chunk) => chunks.push(chunk));
    await new Promise((resolve) => setTimeout(resolve, 50));
    const cancelledAt = Date.now();
    assert.equal(handle.cancel(), true);
    const result = await handle;
    const waited = Date.now() - cancelledAt;
    assert.ok(waited < 1000, `resolved ${waited} ms after the cancel`);
    assertCancelledUnsent(result, chunks);
    await service.dispose();
    assert.equal(pids(received()).length, 1, 'no sidecar was started for it');
  });

  test(
    'cancelled between two attempts (while the sidecar is pinged after a timeout): resolved as cancelled, not tried again',
    BOUNDED,
    async () => {
      let handle: ReturnType<LlmService['promptStream']> | undefined;
      const { service, received } = fakeService('silent', {
        logger: (_level, message) => {
          if (/attempt 1 of 2 timed out/.test(message)) handle?.cancel();
        },
      });
      await service.loadModel('/fake.gguf');
      const chunks: LlmChunk[] = [];
      handle = service.promptStream('hi', (chunk) => chunks.push(chunk));
      assertCancelledUnsent(await handle, chunks);
      await service.dispose();
      assert.deepEqual(calls(received()).slice(2), ['promptStream 3', 'cancel 3', 'ping 4', 'shutdown 5']);
    },
  );

  test(
    "a session's turn: resolved as cancelled with one final chunk, the history unchanged; also while queued or while a sidecar restarts",
    BOUNDED,
    async () => {
      const { service, received } = fakeService('stream', { restart: { initialDelayMs: 5000 } });
      await service.loadModel('/fake.gguf');
      const session = await service.createSession();
      const chunks: LlmChunk[] = [];
      const controller = new AbortController();
      const turn = session.promptStream('hi', (chunk) => chunks.push(chunk), { signal: controller.signal });
      controller.abort();
      assertCancelledUnsent(await turn, chunks);
      // Cancelled while it waits for the turn before it (which streams until it is cancelled).
      const first = new AbortController();
      const running = session.prompt('first', { signal: first.signal, onTextChunk: () => first.abort() });
      const queued = session.prompt('queued', { requestId: 'queued' });
      assert.equal(service.cancel('queued'), true);
      assert.equal(await running, 'a ');
      assert.equal(await queued, '');
      assert.deepEqual(await session.getHistory(), [
        { role: 'user', content: 'first' },
        { role: 'assistant', content: 'a ' },
      ]);
      // Cancelled while a sidecar restarts: resolved at once.
      await killSidecar(service);
      const restarting = session.prompt('later', { requestId: 'later' });
      await new Promise((resolve) => setTimeout(resolve, 50));
      const cancelledAt = Date.now();
      assert.equal(service.cancel('later'), true);
      assert.equal(await restarting, '');
      const waited = Date.now() - cancelledAt;
      assert.ok(waited < 1000, `resolved ${waited} ms after the cancel`);
      await service.dispose();
      assert.equal(
        calls(received()).filter((line) => line.startsWith('prompt')).length,
        1,
        'only the first turn was sent',
      );
    },
  );
});

describe('dispose', () => {
  test(
    'shuts the sidecar down gracefully: shutdown sent, the sidecar exits by itself, a running stream resolves as cancelled',
    BOUNDED,
    async () => {
      const { service, received, entries } = fakeService('stream');
      await service.loadModel('/fake.gguf');
      const pid = service.sidecarPid;
      const chunks: LlmChunk[] = [];
      const stream = service.promptStream('hi', (chunk) => chunks.push(chunk));
      await until(() => chunks.length === 1, 5000, 'the first chunk');
      await service.dispose();
      const result = await stream;
      assert.deepEqual([result.text, result.finishReason], ['a ', 'cancelled']);
      assert.deepEqual(
        chunks.map((c) => [c.content, c.isFinal, c.finishReason]),
        [
          ['a ', false, undefined],
          ['', true, 'cancelled'],
        ],
      );
      assert.deepEqual(calls(received()).slice(2), ['promptStream 3', 'shutdown 4']);
      assert.ok(entries.some((e) => e.message.endsWith(`fake ${pid} exiting on shutdown`)));
      assert.ok(!entries.some((e) => /SIGTERM|SIGKILL/.test(e.message)), 'no signal was needed');
      await assert.rejects(service.listModels(), { code: 'CLOSED' });
    },
  );

  test(
    'during a restart backoff ends the wait: no sidecar is started, a pending call rejects with CLOSED',
    BOUNDED,
    async () => {
      const { service, received } = fakeService('silent', { restart: { initialDelayMs: 5000 } });
      await service.loadModel('/fake.gguf');
      await killSidecar(service);
      const pending = service.listModels().catch((error: LLMServiceError) => error.code);
      await new Promise((resolve) => setTimeout(resolve, 50));
      const started = Date.now();
      await service.dispose();
      const took = Date.now() - started;
      assert.ok(took < 1000, `dispose took ${took} ms`);
      assert.equal(await pending, 'CLOSED');
      assert.equal(pids(received()).length, 1, 'no second sidecar was started');
    },
  );

  test(
    'during the reloads of a restart stops them: the next model is not loaded, the new sidecar is shut down',
    BOUNDED,
    async () => {
      const { service, received } = fakeService('slow-reload', { sidecar: fakeWithMarker('slow-reload', marker()) });
      await service.loadModel({ modelPath: '/fake.gguf', modelId: 'one' });
      await service.loadModel({ modelPath: '/fake.gguf', modelId: 'two' });
      await killSidecar(service);
      const pending = service.listModels().catch((error: LLMServiceError) => error.code);
      await until(
        () => pids(received()).length === 2 && methodsOf(received(), pids(received())[1]).includes('loadModel'),
        5000,
        'the first reload',
      );
      await service.dispose();
      assert.equal(await pending, 'CLOSED');
      const second = pids(received())[1];
      assert.deepEqual(methodsOf(received(), second), ['initialize', 'loadModel', 'cancel', 'shutdown']);
      assert.ok(second !== undefined && !running(Number(second)));
    },
  );
});

describe('a stream that stalls after its first chunk (streamIdleTimeoutMs)', () => {
  test('is cancelled and rejects with TIMEOUT, not retried; a sidecar that answers ping is kept', BOUNDED, async () => {
    const { service, received } = fakeService('stream-stall', { streamIdleTimeoutMs: 200, workerTimeoutMs: 0 });
    await service.loadModel('/fake.gguf');
    const pid = service.sidecarPid;
    const chunks: LlmChunk[] = [];
    const started = Date.now();
    const outcome = await service.promptStream('hi', (chunk) => chunks.push(chunk)).catch((error: unknown) => error);
    const took = Date.now() - started;
    assert.ok(outcome instanceof StreamIdleTimeoutError, String(outcome));
    assert.equal(outcome.code, 'TIMEOUT');
    assert.equal(outcome.message, 'promptStream stalled: no chunk within 200 ms of the one before.');
    assert.ok(took >= 200 && took < 3000, `rejected after ${took} ms`);
    assert.deepEqual(
      chunks.map((c) => c.content),
      ['a '],
    );
    assert.equal(service.sidecarPid, pid);
    await service.dispose();
    assert.deepEqual(calls(received()).slice(2), ['promptStream 3', 'cancel 3', 'ping 4', 'shutdown 5']);
  });

  test("prompt's error names prompt; a sidecar that does not answer ping either is restarted", BOUNDED, async () => {
    const { service } = fakeService('stream-hang', { streamIdleTimeoutMs: 200 });
    await service.loadModel('/fake.gguf');
    const pid = service.sidecarPid ?? 0;
    await assert.rejects(service.prompt('hi'), {
      name: 'StreamIdleTimeoutError',
      code: 'TIMEOUT',
      message: 'prompt stalled: no chunk within 200 ms of the one before.',
    });
    await until(() => !running(pid), 5000, 'the hung sidecar being killed');
    await service.dispose();
  });

  test('0 turns it off: the stream waits on, until it is cancelled', BOUNDED, async () => {
    const { service } = fakeService('stream-stall', { streamIdleTimeoutMs: 0 });
    await service.loadModel('/fake.gguf');
    const handle = service.promptStream('hi', () => {});
    const early = await Promise.race([
      handle.then(
        () => 'resolved',
        () => 'rejected',
      ),
      new Promise((resolve) => setTimeout(resolve, 600, 'pending')),
    ]);
    assert.equal(early, 'pending');
    handle.cancel();
    await assert.rejects(handle, CancelTimeoutError);
    await service.dispose();
  });

  test('the default is 60 s', BOUNDED, async (t) => {
    assert.equal(DEFAULT_STREAM_IDLE_TIMEOUT_MS, 60_000);
    const { service } = fakeService('stream-stall', { workerTimeoutMs: 0 });
    await service.loadModel('/fake.gguf');
    t.mock.timers.enable({ apis: ['setTimeout'] });
    let chunks = 0;
    let settled: unknown = 'pending';
    void service.promptStream('hi', () => chunks++).catch((error: unknown) => (settled = error));
    /** How the stream ended so far (a function: the assertions below would narrow a variable). */
    const outcome = (): unknown => settled;
    // The child's I/O still runs (only setTimeout is mocked): wait for the chunk by event-loop turns.
    const turns = async (): Promise<void> => {
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    };
    const deadline = Date.now() + 5000;
    while (chunks === 0 && Date.now() < deadline) await turns();
    try {
      assert.equal(chunks, 1);
      t.mock.timers.tick(59_999);
      await turns();
      assert.equal(outcome(), 'pending', 'stalled before 60 s');
      t.mock.timers.tick(1);
      // It rejects once the sidecar has answered the ping that follows the cancel.
      const answered = Date.now() + 5000;
      while (outcome() === 'pending' && Date.now() < answered) await turns();
      const error = outcome();
      assert.ok(error instanceof StreamIdleTimeoutError, `not timed out at 60 s: ${String(error)}`);
    } finally {
      t.mock.timers.reset();
      await service.dispose();
    }
  });

  test(
    "a session's turn: rejects with TIMEOUT once the sidecar answers the cancel; the history keeps the turn as far as it got",
    BOUNDED,
    async () => {
      const { service, received } = fakeService('stream', { streamIdleTimeoutMs: 200 });
      await service.loadModel('/fake.gguf');
      const session = await service.createSession();
      const chunks: LlmChunk[] = [];
      const texts: string[] = [];
      const onTextChunk = (text: string): number => texts.push(text);
      await assert.rejects(
        session.promptStream('hi', (chunk) => chunks.push(chunk), { onTextChunk }),
        {
          name: 'StreamIdleTimeoutError',
          message: 'promptStream stalled: no chunk within 200 ms of the one before.',
        },
      );
      assert.deepEqual(
        chunks.map((c) => c.content),
        ['a '],
      );
      assert.deepEqual(texts, ['a '], "node-llama-cpp's onTextChunk too");
      assert.deepEqual(await session.getHistory(), [
        { role: 'user', content: 'hi' },
        { role: 'assistant', content: 'a ' },
      ]);
      await service.dispose();
      assert.deepEqual(calls(received()).slice(3, 6), ['promptStream 4', 'cancel 4', 'getSession 5']);
    },
  );
});

describe('a model whose reload fails is forgotten', () => {
  test(
    'a reload that crashes the sidecar: the call fails with the exit, the next one gets a sidecar without the model',
    BOUNDED,
    async () => {
      const { service, received, entries } = fakeService('crash-reload', {
        sidecar: fakeWithMarker('crash-reload', marker()),
      });
      await service.loadModel('/fake.gguf');
      await killSidecar(service);
      await assert.rejects(service.listModels(), (error: LLMServiceError) => {
        assert.equal(error.code, 'SIDECAR_EXITED');
        assert.equal(error.message, 'The sidecar exited unexpectedly (exit code 134).');
        assert.match(error.details ?? '', /GGML_ASSERT: out of memory/);
        return true;
      });
      assert.ok(entries.some((e) => e.level === 'error' && /could not reload model fake .*forgot it/.test(e.message)));
      assert.deepEqual(await service.listModels(), []);
      await service.dispose();
      const [, crashed, third] = pids(received());
      assert.deepEqual(methodsOf(received(), crashed), ['initialize', 'loadModel']);
      assert.deepEqual(methodsOf(received(), third), ['initialize', 'listModels', 'shutdown']);
    },
  );

  test(
    'unloadModel with no sidecar running, past the restart limit, drops the model without starting one',
    BOUNDED,
    async () => {
      const { service, received } = fakeService('silent', { restart: { maxRestarts: 0 } });
      await service.loadModel({ modelPath: '/fake.gguf', modelId: 'one' });
      await service.loadModel({ modelPath: '/fake.gguf', modelId: 'two' });
      await killSidecar(service);
      await assert.rejects(service.listModels(), { code: 'RESTART_LIMIT' });
      assert.equal(await service.unloadModel('one'), true);
      assert.equal(await service.unloadModel(), true, 'the default model, the latest loaded');
      assert.equal(await service.unloadModel(), false, 'none left');
      assert.equal(service.sidecarPid, undefined);
      await service.dispose();
      assert.equal(pids(received()).length, 1, 'no sidecar was started');
    },
  );

  test('unloadModel after a crash: the restarted sidecar does not load the model again', BOUNDED, async () => {
    const { service, received } = fakeService('silent');
    await service.loadModel('/fake.gguf');
    await killSidecar(service);
    assert.equal(await service.unloadModel('fake'), true);
    assert.equal(service.sidecarPid, undefined, 'no sidecar was started for it');
    assert.deepEqual(await service.listModels(), []);
    await service.dispose();
    assert.deepEqual(methodsOf(received(), pids(received())[1]), ['initialize', 'listModels', 'shutdown']);
  });
});
