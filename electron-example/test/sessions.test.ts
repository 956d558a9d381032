/**
 * Chat sessions, load progress and cancel, and the model limit, through LlmService on the real
 * sidecar with tiny random models; and how a session turn is retried, against the fake sidecar.
 */

import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  CancelTimeoutError,
  type ChatSession,
  type LlmChunk,
  LlmService,
  LLMServiceError,
  type ModelInfo,
  type SessionMessage,
  WorkerTimeoutError,
} from '../client/src/index.js';
import { FAKE_SIDECAR, fakeService } from './helpers/fake-service.js';
import {
  devSidecarCommand,
  GREEDY,
  recordingLogger,
  tempDir,
  TEST_LOAD,
  until,
  writeTinyModel,
} from './helpers/sidecar.js';

/** A short greedy turn. */
const TURN = { maxTokens: 8, ...GREEDY } as const;

const user = (content: string): SessionMessage => ({ role: 'user', content });
const assistant = (content: string): SessionMessage => ({ role: 'assistant', content });

function assertRising(values: readonly number[]): void {
  assert.ok(values.length >= 1, 'no progress reported');
  for (const [i, value] of values.entries()) {
    assert.ok(value >= 0 && value <= 1, `progress ${value} out of 0..1`);
    if (i > 0) assert.ok(value > (values[i - 1] ?? 1), `progress not rising: ${values.join(', ')}`);
  }
  assert.equal(values.at(-1), 1, `progress did not end with 1: ${values.join(', ')}`);
}

describe('chat sessions through LlmService on the real sidecar: two models, several sessions', () => {
  const models = tempDir();
  const { logger, entries } = recordingLogger();
  const service = new LlmService({ sidecar: devSidecarCommand(), logger, restart: { initialDelayMs: 50 } });
  const progress: number[] = [];
  let progressBeforeResolve = 0;
  let alpha: ModelInfo;
  let beta: ModelInfo;

  before(async () => {
    const [alphaPath, betaPath] = await Promise.all([
      writeTinyModel(models.dir, 'alpha'),
      writeTinyModel(models.dir, 'beta', ['--hidden', '96']),
    ]);
    alpha = await service.loadModel(
      { modelPath: alphaPath, ...TEST_LOAD },
      { onLoadProgress: (p) => progress.push(p) },
    );
    progressBeforeResolve = progress.length;
    beta = await service.loadModel({ modelPath: betaPath, contextSize: 512, ...TEST_LOAD });
  });
  after(async () => {
    await service.dispose();
    models.remove();
  });

  /** The prompt tokens of a chat prompt of `history` and `text`: what a session turn must evaluate. */
  async function expectedPromptTokens(session: ChatSession, history: readonly SessionMessage[], text: string) {
    const { systemPrompt, modelId } = session;
    const options = { modelId, ...(systemPrompt === undefined ? {} : { systemPrompt }) };
    return (await service.countTokens([...history, user(text)], options)).promptTokens;
  }

  test('loadModel calls onLoadProgress with rising numbers, ending with 1 before it resolves', () => {
    assertRising(progress);
    assert.equal(progressBeforeResolve, progress.length, 'no progress after loadModel resolved');
    assert.deepEqual([alpha.modelId, beta.modelId], ['alpha', 'beta']);
  });

  test('three sessions on two models take turns; each history holds its own turns, as streamed', async () => {
    const chats = [
      { session: await service.createSession({ modelId: 'alpha', systemPrompt: 'You are terse.' }), history: [] },
      { session: await service.createSession({ modelId: 'alpha' }), history: [] },
      { session: await service.createSession({ modelId: 'beta', contextSize: 384 }), history: [] },
    ] as { session: ChatSession; history: SessionMessage[] }[];
    const [first, second, third] = chats.map((chat) => chat.session) as [ChatSession, ChatSession, ChatSession];
    assert.equal(new Set([first.id, second.id, third.id]).size, 3);
    assert.deepEqual(
      chats.map(({ session }) => [session.modelId, session.systemPrompt, session.contextSize]),
      [
        ['alpha', 'You are terse.', alpha.contextSize],
        ['alpha', undefined, alpha.contextSize],
        ['beta', undefined, 384],
      ],
    );
    const sessionsByModel = async (): Promise<Record<string, string[]>> =>
      Object.fromEntries((await service.listModels()).map((m) => [m.modelId, m.sessions]));
    assert.deepEqual(await sessionsByModel(), { alpha: [first.id, second.id], beta: [third.id] });

    for (let round = 1; round <= 3; round++) {
      for (const [n, { session, history }] of chats.entries()) {
        const text = `session ${n} says hello, round ${round}`;
        const expectedTokens = await expectedPromptTokens(session, history, text);
        const chunks: LlmChunk[] = [];
        let reply: string;
        if (round === 2 && n === 1) {
          reply = await session.prompt(text, TURN); // the old call shape: the text only
        } else {
          const result = await session.promptStream(text, (chunk) => chunks.push(chunk), TURN);
          reply = result.text;
          assert.equal(chunks.map((c) => c.content).join(''), reply, 'the streamed text is the reply');
          assert.equal(chunks.filter((c) => c.isFinal).length, 1);
          assert.equal(chunks.at(-1)?.finishReason, 'length');
          assert.equal(result.usage.promptTokens, expectedTokens, `round ${round}, session ${n}: the whole history`);
        }
        history.push(user(text), assistant(reply));
        assert.deepEqual(await session.getHistory(), history, `round ${round}, session ${n}`);
      }
    }
    const info = await third.getInfo();
    assert.deepEqual(
      [info.sessionId, info.modelId, info.contextSize, info.droppedMessages],
      [third.id, 'beta', 384, 0],
    );
    assert.deepEqual(await sessionsByModel(), { alpha: [first.id, second.id], beta: [third.id] });
    for (const { session } of chats) assert.equal(await session.close(), true);
    assert.deepEqual(await sessionsByModel(), { alpha: [], beta: [] });
  });

  test('setHistory restores a chat, reset starts over with the system prompt kept, close ends it', async () => {
    const session = await service.createSession({ modelId: 'alpha', systemPrompt: 'Be kind.' });
    const saved = [user('my name is Ada'), assistant('hello Ada')];
    assert.deepEqual((await session.setHistory(saved)).messages, saved);
    assert.deepEqual(await session.getHistory(), saved);
    const expectedTokens = await expectedPromptTokens(session, saved, 'what is my name?');
    const next = await session.promptWithResult('what is my name?', TURN);
    assert.equal(next.usage.promptTokens, expectedTokens, 'the turn follows the restored history');
    assert.deepEqual(await session.getHistory(), [...saved, user('what is my name?'), assistant(next.text)]);

    const reset = await session.reset();
    assert.deepEqual([reset.messages, reset.systemPrompt], [[], 'Be kind.']);
    const fresh = await session.promptWithResult('hi', TURN);
    assert.equal(fresh.usage.promptTokens, await expectedPromptTokens(session, [], 'hi'));
    assert.deepEqual(await session.getHistory(), [user('hi'), assistant(fresh.text)]);

    const { id } = session;
    assert.equal(await session.close(), true);
    assert.equal(session.isClosed, true);
    await assert.rejects(session.prompt('hi'), { code: 'CLOSED' });
    await assert.rejects(session.getHistory(), { code: 'CLOSED' });
    assert.equal(await session.close(), false);
    assert.ok((await service.listModels()).every((m) => !m.sessions.includes(id)));
  });

  test('an aborted turn resolves as cancelled, and the session keeps the reply as far as it got', async () => {
    const session = await service.createSession({ modelId: 'alpha' });
    const controller = new AbortController();
    let streamed = '';
    const result = await session.promptStream(
      'tell me a long story',
      (chunk) => {
        streamed += chunk.content;
        controller.abort();
      },
      { ...GREEDY, signal: controller.signal },
    );
    assert.equal(result.finishReason, 'cancelled');
    assert.equal(streamed, result.text);
    assert.ok(result.usage.completionTokens < 1000, `${result.usage.completionTokens} tokens: not cancelled early`);
    assert.deepEqual(await session.getHistory(), [user('tell me a long story'), assistant(result.text)]);
    const next = await session.promptWithResult('go on', TURN);
    assert.deepEqual(await session.getHistory(), [
      user('tell me a long story'),
      assistant(result.text),
      user('go on'),
      assistant(next.text),
    ]);
    await session.close();
  });

  test('a session outlives an unload of its model: its turns fail with UnknownModelId until it is loaded again', async () => {
    const session = await service.createSession({ modelId: 'beta' });
    const first = await session.prompt('one', TURN);
    assert.equal(await service.unloadModel('beta'), true);
    await assert.rejects(session.prompt('two', TURN), (error: unknown) => {
      assert.ok(error instanceof LLMServiceError, String(error));
      assert.equal(error.code, -32005);
      assert.deepEqual(error.data, { modelId: 'beta' });
      return true;
    });
    assert.deepEqual(await session.getHistory(), [user('one'), assistant(first)], 'the failed turn left nothing');
    await service.loadModel({ modelPath: beta.modelPath, contextSize: 512, ...TEST_LOAD });
    const third = await session.prompt('three', TURN);
    assert.deepEqual(await session.getHistory(), [user('one'), assistant(first), user('three'), assistant(third)]);
    await session.close();
  });

  test('after a crash, the next turn opens the session again on the new sidecar, history and all', async () => {
    const session = await service.createSession({ modelId: 'alpha', systemPrompt: 'You are terse.' });
    const first = await session.prompt('before the crash', TURN);
    const oldId = session.id;
    const pid = service.sidecarPid;
    assert.ok(pid !== undefined);
    process.kill(pid, 'SIGKILL');
    await until(() => service.sidecarPid === undefined, 5000, 'the kill being noticed');

    const history = [user('before the crash'), assistant(first)];
    let streamed = '';
    const result = await session.promptStream('after the crash', (chunk) => (streamed += chunk.content), TURN);
    assert.notEqual(service.sidecarPid, pid);
    assert.equal(streamed, result.text);
    assert.equal(result.usage.promptTokens, await expectedPromptTokens(session, history, 'after the crash'));
    assert.deepEqual(await session.getHistory(), [...history, user('after the crash'), assistant(result.text)]);
    assert.equal(session.systemPrompt, 'You are terse.');
    assert.ok(entries.some((e) => e.message.startsWith(`reopened chat session ${oldId} as ${session.id}`)));
    await session.close();
  });
});

describe('cancelling loadModel on the real sidecar', () => {
  const models = tempDir();
  const { logger, entries } = recordingLogger();
  const service = new LlmService({ sidecar: devSidecarCommand(), logger });
  let big: string;

  before(async () => {
    // About 85 MB: read without mmap, its load takes a few hundred ms and reports progress on the way.
    big = await writeTinyModel(models.dir, 'big', ['--hidden', '512', '--layers', '8']);
  });
  after(async () => {
    await service.dispose();
    models.remove();
  });

  /**
   * Load `big`, cancelling it at its first progress short of 1 with `cancel`: the error, or the model
   * if it won. `nodeLlamaCpp`: the progress callback and the signal go in the options object, under
   * node-llama-cpp's names (`onLoadProgress`, `loadSignal`), instead of the second argument.
   */
  async function loadAndCancel(
    cancel: () => void,
    options: { signal?: AbortSignal; requestId?: string },
    nodeLlamaCpp = false,
  ): Promise<LLMServiceError | ModelInfo> {
    const seen: number[] = [];
    const onLoadProgress = (progress: number): void => {
      if (seen.length === 0 && progress < 1) cancel();
      seen.push(progress);
    };
    const load = { modelPath: big, useMmap: false, ...TEST_LOAD };
    const outcome = await (
      nodeLlamaCpp
        ? service.loadModel({ ...load, onLoadProgress, loadSignal: options.signal })
        : service.loadModel(load, { ...options, onLoadProgress })
    ).catch((error: unknown) => error);
    if (outcome instanceof LLMServiceError) {
      assert.equal(outcome.code, -32800, outcome.message);
      assert.equal(outcome.data, undefined);
      assert.ok(
        seen.every((p) => p < 1),
        'a cancelled load never reported 1',
      );
      assert.deepEqual(await service.listModels(), [], 'nothing of the cancelled load stays');
      return outcome;
    }
    assert.ok(!(outcome instanceof Error), String(outcome));
    assertRising(seen);
    await service.unloadModel((outcome as ModelInfo).modelId);
    return outcome as ModelInfo;
  }

  test(
    'an AbortSignal mid-load: RequestCancelled (-32800), or the model when its load finished first; never a hang',
    { timeout: 60_000 },
    async (t) => {
      const controller = new AbortController();
      const outcome = await loadAndCancel(() => controller.abort(), { signal: controller.signal });
      if (!(outcome instanceof LLMServiceError)) t.diagnostic('the load finished before the cancel reached it');
      // Whatever the cancelled load had taken was freed: the same file loads again.
      const info = await service.loadModel({ modelPath: big, useMmap: false, ...TEST_LOAD });
      assert.equal(info.modelId, 'big');
      assert.equal(await service.unloadModel('big'), true);
    },
  );

  test(
    'cancel(requestId) cancels a load as the signal does; an already aborted signal sends nothing',
    { timeout: 60_000 },
    async (t) => {
      const outcome = await loadAndCancel(() => assert.equal(service.cancel('load-big'), true), {
        requestId: 'load-big',
      });
      if (!(outcome instanceof LLMServiceError)) t.diagnostic('the load finished before the cancel reached it');
      assert.equal(service.cancel('load-big'), false, 'a finished load has no handle left');
      await assert.rejects(service.loadModel(big, { signal: AbortSignal.abort() }), { code: 'ABORTED' });
      assert.deepEqual(await service.listModels(), []);
    },
  );

  test(
    "node-llama-cpp's onLoadProgress and loadSignal in the options object report progress and cancel the load, with no warning",
    { timeout: 60_000 },
    async (t) => {
      const controller = new AbortController();
      const outcome = await loadAndCancel(() => controller.abort(), { signal: controller.signal }, true);
      if (!(outcome instanceof LLMServiceError)) t.diagnostic('the load finished before the cancel reached it');
      assert.deepEqual(
        entries.filter((e) => e.level === 'warn' && /loadModel/.test(e.message)),
        [],
      );
    },
  );
});

describe('the model limit on the real sidecar (--max-models 2)', () => {
  const models = tempDir();
  const { logger, entries } = recordingLogger();
  const service = new LlmService({
    sidecar: devSidecarCommand(['--max-models', '2']),
    logger,
    restart: { initialDelayMs: 50 },
  });
  let tiny: string;

  before(async () => {
    tiny = await writeTinyModel(models.dir, 'tiny');
  });
  after(async () => {
    await service.dispose();
    models.remove();
  });

  test('a third load unloads the least recently used model, and a restart brings back only the two left', async () => {
    const load = (modelId: string): Promise<ModelInfo> => service.loadModel({ modelPath: tiny, modelId, ...TEST_LOAD });
    const loadedFirst = await load('first');
    await load('second');
    await service.prompt('hi', { modelId: 'first', maxTokens: 1, ...GREEDY }); // "second" is now the least recent
    const third = await load('third');
    const listed = await service.listModels();
    assert.deepEqual(listed.map((m) => m.modelId).sort(), ['first', 'third']);
    const used = Object.fromEntries(listed.map((m) => [m.modelId, m.lastUsedAt]));
    assert.ok(Number.isInteger(used['first']) && (used['first'] ?? 0) > loadedFirst.lastUsedAt - 1);
    assert.ok((used['first'] ?? Infinity) <= third.lastUsedAt, 'the prompt on "first" came before the third load');
    await assert.rejects(service.prompt('hi', { modelId: 'second', maxTokens: 1 }), { code: -32005 });
    assert.ok(entries.some((e) => e.message === "model second was unloaded by the sidecar's model limit"));

    const pid = service.sidecarPid;
    assert.ok(pid !== undefined);
    process.kill(pid, 'SIGKILL');
    await until(() => service.sidecarPid === undefined, 5000, 'the kill being noticed');
    const reloaded = await service.listModels();
    assert.notEqual(service.sidecarPid, pid);
    assert.deepEqual(reloaded.map((m) => m.modelId).sort(), ['first', 'third']);
  });
});

describe('ChatSession worker timeouts (against the fake sidecar)', () => {
  /** The methods and ids the fake received, without its pid. */
  const calls = (received: string[]): string[] => received.map((line) => line.split(' ').slice(1).join(' '));
  /** A service on the fake sidecar in `mode`, with a model loaded and a session open on it. */
  const fakeSession = async (mode: string) => {
    const { service, received } = fakeService(mode);
    await service.loadModel('/fake.gguf');
    return { service, received, session: await service.createSession() };
  };

  test('a timed-out turn is cancelled, its partial turn taken back, then tried again: the history has it once', async () => {
    const { service, received, session } = await fakeSession('session-cancel-first');
    const chunks: LlmChunk[] = [];
    const result = await session.promptStream('hi', (chunk) => chunks.push(chunk));
    const history = await session.getHistory();
    await service.dispose();
    assert.deepEqual([result.text, result.finishReason], ['fake reply', 'length']);
    assert.equal(chunks.map((c) => c.content).join(''), 'fake reply');
    assert.deepEqual(
      chunks.filter((c) => c.isFinal).map((c) => c.finishReason),
      ['length'],
      'nothing of the cancelled attempt reached the caller',
    );
    assert.deepEqual(history, [user('hi'), assistant('fake reply')]);
    assert.deepEqual(calls(received()), [
      'initialize 1',
      'loadModel 2',
      'createSession 3',
      'promptStream 4',
      'cancel 4',
      'setSessionHistory 5',
      'promptStream 6',
      'getSession 7',
      'shutdown 8',
    ]);
  });

  test('prompt is retried the same way (it runs as a stream, so the timeout is a first-chunk one)', async () => {
    const { service, received, session } = await fakeSession('session-cancel-first');
    assert.equal(await session.prompt('hi'), 'fake reply');
    assert.deepEqual(await session.getHistory(), [user('hi'), assistant('fake reply')]);
    await service.dispose();
    assert.deepEqual(calls(received()).slice(3, 7), [
      'promptStream 4',
      'cancel 4',
      'setSessionHistory 5',
      'promptStream 6',
    ]);
  });

  test('a whole reply that comes after the timeout is the result: not sent again, its chunks delivered', async () => {
    const { service, received, session } = await fakeSession('session-late-answer');
    const chunks: LlmChunk[] = [];
    const result = await session.promptStream('hi', (chunk) => chunks.push(chunk));
    const history = await session.getHistory();
    await service.dispose();
    assert.equal(result.text, 'late reply');
    assert.equal(chunks.map((c) => c.content).join(''), 'late reply');
    assert.equal(chunks.at(-1)?.isFinal, true);
    assert.deepEqual(history, [user('hi'), assistant('late reply')]);
    assert.deepEqual(calls(received()).slice(3), ['promptStream 4', 'cancel 4', 'getSession 5', 'shutdown 6']);
  });

  test('a turn its caller cancels, whose cancel gets no answer, rejects after the grace time; the session goes on', async () => {
    const { service, received, session } = await fakeSession('session-ignore-cancel');
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 50);
    const started = Date.now();
    const outcome = await session.prompt('hi', { signal: controller.signal }).catch((error: unknown) => error);
    const waited = Date.now() - started;
    assert.ok(outcome instanceof CancelTimeoutError, String(outcome));
    assert.equal(outcome.message, 'prompt was cancelled, but the sidecar did not answer within 300 ms of the cancel.');
    assert.ok(waited >= 350 && waited < 2000, `settled ${waited} ms after the call`);
    assert.equal(await session.prompt('again'), 'fake reply', 'the session goes on');
    await service.dispose();
    assert.deepEqual(calls(received()).slice(3), [
      'promptStream 4',
      'cancel 4',
      'ping 5',
      'promptStream 6',
      'shutdown 7',
    ]);
  });

  test('a sidecar that answers ping but not the cancelled turn is not sent the turn again', async () => {
    const { service, received, session } = await fakeSession('session-ignore-cancel');
    const chunks: LlmChunk[] = [];
    const outcome = await session.promptStream('hi', (chunk) => chunks.push(chunk)).catch((error: unknown) => error);
    await service.dispose();
    assert.ok(outcome instanceof LLMServiceError && !(outcome instanceof WorkerTimeoutError), String(outcome));
    assert.equal(outcome.code, 'TIMEOUT');
    assert.match(
      outcome.message,
      /^session promptStream timed out after retries \(1 attempt; the last: promptStream sent no first chunk within 300 ms\.\)$/,
    );
    assert.deepEqual(outcome.data, { attempts: 1, timeoutMs: 300 });
    assert.ok(outcome.cause instanceof WorkerTimeoutError);
    assert.deepEqual(chunks, []);
    assert.deepEqual(calls(received()).slice(3), ['promptStream 4', 'cancel 4', 'ping 5', 'shutdown 6']);
  });

  test('a hung sidecar is restarted, and the session opened on the new one with its history, before the retry', async () => {
    const marker = join(mkdtempSync(join(tmpdir(), 'session-hang-')), 'hung');
    const { service, received } = fakeService('session-hang', {
      sidecar: { command: process.execPath, args: [FAKE_SIDECAR, 'session-hang', marker] },
    });
    await service.loadModel('/fake.gguf');
    const session = await service.createSession();
    await session.setHistory([user('earlier'), assistant('turn')]);
    assert.equal(await session.prompt('hi'), 'fake reply');
    const history = await session.getHistory();
    await service.dispose();
    assert.deepEqual(history, [user('earlier'), assistant('turn'), user('hi'), assistant('fake reply')]);
    const lines = received();
    const pids = [...new Set(lines.map((line) => line.split(' ')[0]))];
    assert.equal(pids.length, 2, 'a second sidecar was started');
    const second = lines.filter((line) => line.startsWith(`${pids[1]} `)).map((line) => line.split(' ')[1]);
    assert.deepEqual(second, [
      'initialize',
      'loadModel',
      'createSession',
      'setSessionHistory',
      'promptStream',
      'getSession',
      'shutdown',
    ]);
  });
});
