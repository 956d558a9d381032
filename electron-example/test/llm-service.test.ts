/** LlmService, the drop-in API: streaming, cancel, crash supervision, worker timeouts and retries. */

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  CancelTimeoutError,
  type LlmChunk,
  LlmService,
  LLMServiceError,
  WorkerTimeoutError,
} from '../client/src/index.js';
import { FAKE_SIDECAR, fakeService } from './helpers/fake-service.js';
import {
  devSidecarCommand,
  GREEDY,
  recordingLogger,
  running,
  tempDir,
  TEST_LOAD,
  until,
  writeTinyModel,
} from './helpers/sidecar.js';

describe('LlmService on the real sidecar', () => {
  const models = tempDir();
  const { logger, entries } = recordingLogger();
  const service = new LlmService({ sidecar: devSidecarCommand(), logger, restart: { initialDelayMs: 50 } });
  let tiny: string;

  before(async () => {
    tiny = await writeTinyModel(models.dir, 'tiny');
    await service.loadModel({ modelPath: tiny, ...TEST_LOAD });
  });
  after(async () => {
    await service.dispose();
    models.remove();
  });

  test('promptStream keeps the old chunk shape, ends with one final chunk, and resolves to the result', async () => {
    const chunks: LlmChunk[] = [];
    const result = await service.promptStream({ text: 'hello' }, (c) => chunks.push(c), { maxTokens: 8, ...GREEDY });
    for (const chunk of chunks) {
      assert.equal(typeof chunk.content, 'string');
      assert.equal(typeof chunk.timestamp, 'number');
    }
    assert.deepEqual(
      chunks.map((c) => c.index),
      chunks.map((_c, i) => i),
    );
    assert.deepEqual(chunks.filter((c) => c.isFinal).length, 1);
    const final = chunks.at(-1);
    assert.equal(final?.isFinal, true);
    assert.equal(final?.finishReason, 'length');
    assert.deepEqual(final?.usage, result.usage);
    assert.equal(result.finishReason, 'length');
    assert.ok(result.timings.tokensPerSecond >= 0);
    assert.ok(!('finishReason' in (chunks[0] ?? {})), 'only the final chunk has a finish reason');
  });

  test('prompt(text) equals the joined stream of the same text', async () => {
    const options = { maxTokens: 16, systemPrompt: 'be brief', ...GREEDY };
    let streamed = '';
    await service.promptStream('tell me', (c) => (streamed += c.content), options);
    assert.equal(await service.prompt('tell me', options), streamed);
  });

  test("node-llama-cpp's onTextChunk gets the reply's text as it comes, in prompt and promptStream alike", async () => {
    const options = { maxTokens: 8, ...GREEDY };
    const pieces: string[] = [];
    const text = await service.prompt('tell me', { ...options, onTextChunk: (piece) => pieces.push(piece) });
    assert.ok(pieces.length > 1, `${pieces.length} pieces`);
    assert.equal(pieces.join(''), text);
    const streamed: string[] = [];
    const chunks: LlmChunk[] = [];
    await service.promptStream('tell me', (chunk) => chunks.push(chunk), {
      ...options,
      onTextChunk: (piece) => streamed.push(piece),
    });
    assert.deepEqual(
      streamed,
      chunks.filter((c) => c.content !== '').map((c) => c.content),
    );
    assert.ok(!entries.some((e) => /onTextChunk/.test(e.message)), 'not reported as ignored');
  });

  test('node-llama-cpp names: customStopTriggers stops before the trigger', async () => {
    const text = await service.prompt('hello world', { maxTokens: 40, raw: true, ...GREEDY });
    const trigger = text.slice(10, 13);
    const stopped = await service.prompt('hello world', {
      maxTokens: 40,
      raw: true,
      customStopTriggers: [trigger],
      ...GREEDY,
    });
    assert.equal(stopped, text.slice(0, text.indexOf(trigger)));
  });

  test('a grammar constrains the reply, through prompt, promptWithResult and promptStream', async () => {
    const grammar = 'root ::= ("yes" | "no") "."';
    for (const seed of [1, 2, 3]) {
      const options = { grammar, raw: true, temperature: 1.5, seed };
      const result = await service.promptWithResult('hi', options);
      assert.ok(['yes.', 'no.'].includes(result.text), `seed ${seed}: ${JSON.stringify(result.text)}`);
      assert.equal(result.finishReason, 'stop');
      assert.equal(result.json, undefined, 'json comes only with jsonSchema');
      assert.equal(await service.prompt('hi', options), result.text);
      let streamed = '';
      const final = await service.promptStream('hi', (c) => (streamed += c.content), options);
      assert.equal(streamed, result.text);
      assert.equal(final.text, result.text);
    }
  });

  test('countTokens counts what prompt evaluates: chat with system prompt and history, raw, or messages', async () => {
    const history = [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'hello' },
    ];
    const chat = { systemPrompt: 'be brief', messages: history, maxTokens: 1, ...GREEDY };
    const counted = await service.countTokens('and now?', chat);
    assert.equal(counted.promptTokens, (await service.promptWithResult('and now?', chat)).usage.promptTokens);
    assert.ok(counted.promptTokens < counted.contextSize);
    const fromMessages = await service.countTokens([...history, { role: 'user', content: 'and now?' }], {
      systemPrompt: 'be brief',
    });
    assert.deepEqual(fromMessages, counted);
    const raw = { raw: true, maxTokens: 1, ...GREEDY };
    const rawCount = await service.countTokens('hello world', raw);
    assert.equal(rawCount.promptTokens, (await service.promptWithResult('hello world', raw)).usage.promptTokens);
    assert.notEqual(rawCount.promptTokens, (await service.countTokens('hello world')).promptTokens);
    // tokenize's defaults read text the way a raw prompt is read.
    assert.equal((await service.tokenize('hello world')).length, rawCount.promptTokens);
  });

  test('tokenize and detokenize round-trip; inspectModel reads the header without loading', async () => {
    const tokens = await service.tokenize('hello world', { addBos: false });
    assert.ok(tokens.length > 0 && tokens.every(Number.isInteger));
    assert.equal((await service.detokenize(tokens)).trim(), 'hello world');
    const inspected = await service.inspectModel(tiny);
    assert.equal(inspected.modelPath, tiny);
    assert.equal(inspected.architecture, 'llama');
    assert.equal(inspected.chatTemplate, true);
  });

  test("node-llama-cpp's gpuLayers 'max' and contextSize 'auto' load: every layer asked for, the sidecar's default context, a note", async () => {
    const info = await service.loadModel({
      modelPath: tiny,
      modelId: 'tiny-auto',
      gpuLayers: 'max',
      contextSize: 'auto',
      ...TEST_LOAD,
    });
    try {
      assert.equal(info.trainContextSize, 2048);
      assert.equal(info.contextSize, 2048, "min(training context, 4096), the sidecar's default");
      assert.ok(entries.some((e) => e.level === 'info' && /contextSize 'auto' is approximated/.test(e.message)));
      assert.ok((await service.prompt('hi', { modelId: 'tiny-auto', maxTokens: 2, ...GREEDY })).length > 0);
    } finally {
      assert.equal(await service.unloadModel('tiny-auto'), true);
    }
  });

  test('an AbortSignal, or cancel(requestId), cancels a running stream', async () => {
    for (const how of ['signal', 'requestId'] as const) {
      const controller = new AbortController();
      let count = 0;
      const result = await service.promptStream(
        'hello',
        () => {
          if (++count === 1) {
            if (how === 'signal') controller.abort();
            else assert.equal(service.cancel('stream-1'), true);
          }
        },
        { ...GREEDY, ...(how === 'signal' ? { signal: controller.signal } : { requestId: 'stream-1' }) },
      );
      assert.equal(result.finishReason, 'cancelled', how);
    }
    assert.equal(service.cancel('stream-1'), false, 'a finished stream has no handle left');
  });

  test("the old handle: promptStream's promise has requestId and cancel(), which ends the stream mid-way", async () => {
    const chunks: LlmChunk[] = [];
    const handle = service.promptStream(
      'hello',
      (chunk) => {
        chunks.push(chunk);
        if (chunks.length === 2) assert.equal(handle.cancel(), true);
      },
      GREEDY,
    );
    assert.match(handle.requestId, /^[0-9a-f-]{36}$/, 'a request id is made up when the caller gives none');
    const result = await handle;
    assert.equal(result.finishReason, 'cancelled');
    assert.deepEqual(
      chunks.filter((c) => c.isFinal).map((c) => c.finishReason),
      ['cancelled'],
    );
    assert.equal(chunks.at(-1)?.isFinal, true);
    assert.equal(chunks.map((c) => c.content).join(''), result.text);
    assert.equal(handle.cancel(), false, 'a settled call cannot be cancelled');
    assert.equal(service.cancel(handle.requestId), false);
    // The caller's own key is the handle's, and cancel(requestId) reaches the same call.
    const keyed = service.promptStream('hello', () => service.cancel('mine'), { requestId: 'mine', ...GREEDY });
    assert.equal(keyed.requestId, 'mine');
    assert.equal((await keyed).finishReason, 'cancelled');
  });

  test('kill -9 mid-stream rejects the call within 1 s; the next call restarts the sidecar with the model reloaded', async () => {
    const before = service.sidecarPid;
    assert.ok(before !== undefined);
    let killedAt = 0;
    const stream = service.promptStream(
      'hello',
      () => {
        if (killedAt === 0) {
          killedAt = Date.now();
          process.kill(before, 'SIGKILL');
        }
      },
      GREEDY,
    );
    await assert.rejects(stream, (error: unknown) => {
      assert.ok(error instanceof LLMServiceError);
      assert.equal(error.code, 'SIDECAR_EXITED');
      assert.match(error.message, /SIGKILL/);
      assert.deepEqual((error.data as { signal: string }).signal, 'SIGKILL');
      return true;
    });
    const rejectedAfterMs = Date.now() - killedAt;
    assert.ok(rejectedAfterMs < 1000, `rejected ${rejectedAfterMs} ms after the kill`);

    const reply = await service.prompt('hello', { maxTokens: 5, raw: true, ...GREEDY });
    assert.ok(reply.length > 0);
    assert.notEqual(service.sidecarPid, before);
    const [model] = await service.listModels();
    assert.equal(model?.modelPath, tiny);
    assert.ok(entries.some((e) => /reloaded model tiny/.test(e.message)));
  });
});

describe('LlmService: replies that take longer than the worker timeout', () => {
  const models = tempDir();
  // Short, so that the reply below takes several of it even on an idle machine (400 tokens took 0.5 s on
  // one). A first chunk that misses it on a busy one is tried again (maxAttempts).
  const timeoutMs = 100;
  const service = new LlmService({ sidecar: devSidecarCommand(), logger: () => {}, workerTimeoutMs: timeoutMs });
  // Long enough to take several worker timeouts to generate on the slow model (several hundred tokens/s).
  const long = { maxTokens: 400, raw: true, ...GREEDY };

  before(async () => {
    const slow = await writeTinyModel(models.dir, 'slow', ['--hidden', '384', '--layers', '6']);
    await service.loadModel({ modelPath: slow, ...TEST_LOAD });
  });
  after(async () => {
    await service.dispose();
    models.remove();
  });

  test('prompt succeeds when its first chunk comes in time, however long the whole reply takes', async () => {
    const started = Date.now();
    const result = await service.promptWithResult('hello', long);
    assert.deepEqual([result.finishReason, result.usage.completionTokens], ['length', 400]);
    assert.ok(result.timings.decodeMs > 2 * timeoutMs, `the reply took only ${result.timings.decodeMs} ms`);
    assert.ok(Date.now() - started > 2 * timeoutMs);
    assert.equal(await service.prompt('hello', long), result.text, 'prompt: the same, as text');
  });

  test("a chat session's prompt too", async () => {
    const session = await service.createSession();
    const result = await session.promptWithResult('hello', { maxTokens: long.maxTokens, ...GREEDY });
    assert.equal(result.usage.completionTokens, 400);
    assert.ok(result.timings.decodeMs > 2 * timeoutMs, `the reply took only ${result.timings.decodeMs} ms`);
    await session.close();
  });

  test("prompt's handle cancels the reply: it resolves with the text so far", async () => {
    const handle = service.promptWithResult('hello', long);
    setTimeout(() => assert.equal(handle.cancel(), true), timeoutMs);
    const result = await handle;
    assert.equal(result.finishReason, 'cancelled');
    assert.ok(result.usage.completionTokens < 400);
    const text = service.prompt('hello', long);
    setTimeout(() => service.cancel(text.requestId), timeoutMs);
    assert.ok((await text).length < (await service.prompt('hello', long)).length);
  });
});

describe('LlmService worker timeouts', () => {
  // Each test disposes the service before reading what the fake received: once the
  // sidecar has exited, every stderr line it wrote has been read.
  test('no first chunk: the stream is cancelled, then tried again once, then fails as timed out after retries', async () => {
    const { service, received } = fakeService('silent');
    await service.loadModel('/fake.gguf');
    const chunks: LlmChunk[] = [];
    const outcome = await service.promptStream('hi', (c) => chunks.push(c)).catch((error: unknown) => error);
    await service.dispose();
    assert.ok(outcome instanceof LLMServiceError && !(outcome instanceof WorkerTimeoutError));
    assert.equal(outcome.code, 'TIMEOUT');
    assert.match(
      outcome.message,
      /^promptStream timed out after retries \(2 attempts; the last: promptStream sent no first chunk within 300 ms\.\)$/,
    );
    assert.deepEqual(outcome.data, { attempts: 2, timeoutMs: 300 });
    assert.ok(outcome.cause instanceof WorkerTimeoutError);
    assert.deepEqual(chunks, []);
    // Each timed-out request is cancelled before the next try; 4 is the health ping between tries.
    const calls = received().map((line) => line.split(' ').slice(1).join(' '));
    assert.deepEqual(calls, [
      'initialize 1',
      'loadModel 2',
      'promptStream 3',
      'cancel 3',
      'ping 4',
      'promptStream 5',
      'cancel 5',
      'shutdown 6',
    ]);
  });

  test('prompt: the timeout applies to the first chunk (prompt runs as a stream); maxAttempts bounds the tries', async () => {
    const { service, received } = fakeService('silent', { maxAttempts: 3 });
    const outcome = await service.prompt('hi', { timeoutMs: 100 }).catch((error: unknown) => error);
    await service.dispose();
    assert.match(
      String(outcome),
      /^LLMServiceError: prompt timed out after retries \(3 attempts; the last: prompt sent no first chunk within 100 ms\.\)$/,
    );
    const prompts = received().filter((line) => / prompt(Stream)? /.test(line));
    assert.deepEqual(
      prompts.map((line) => line.split(' ')[1]),
      ['promptStream', 'promptStream', 'promptStream'],
    );
  });

  test('the default worker timeout is 10 s: a first chunk may take up to 10 s, not a moment longer', async (t) => {
    const { service, entries } = fakeService('silent', { workerTimeoutMs: undefined });
    await service.loadModel('/fake.gguf');
    // Only setTimeout is mocked, from here on: the child's I/O still runs; the prompt's timers don't.
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const outcome = service.promptStream('hi', () => {}).catch((error: unknown) => error);
    const timedOut = (): boolean => entries.some((e) => /attempt 1 of 2 timed out/.test(e.message));
    const turns = async (): Promise<void> => {
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    };
    try {
      await turns(); // the request is armed with its timer
      t.mock.timers.tick(9_999);
      await turns();
      assert.equal(timedOut(), false, 'timed out before 10 s');
      t.mock.timers.tick(1);
      await turns();
      assert.ok(timedOut(), 'no time-out at 10 s');
      assert.ok(entries.some((e) => /promptStream sent no first chunk within 10000 ms\./.test(e.message)));
    } finally {
      t.mock.timers.reset();
      await service.dispose();
    }
    assert.ok((await outcome) instanceof LLMServiceError);
  });

  test('an aborted call whose cancel gets no answer rejects after the grace time, with CancelTimeoutError', async () => {
    const { service, received } = fakeService('silent', { workerTimeoutMs: 0 });
    await service.loadModel('/fake.gguf');
    const pid = service.sidecarPid;
    const controller = new AbortController();
    const stream = service.promptStream('hi', () => {}, { signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    const started = Date.now();
    const outcome = await stream.catch((error: unknown) => error);
    const waited = Date.now() - started;
    assert.ok(outcome instanceof CancelTimeoutError, String(outcome));
    assert.equal(outcome.code, 'TIMEOUT');
    assert.equal(
      outcome.message,
      'promptStream was cancelled, but the sidecar did not answer within 300 ms of the cancel.',
    );
    assert.ok(waited >= 350 && waited < 2000, `settled ${waited} ms after the call`);
    assert.equal(service.sidecarPid, pid, 'a sidecar that answers ping is kept');
    await service.dispose();
    assert.deepEqual(
      received().map((line) => line.split(' ').slice(1).join(' ')),
      ['initialize 1', 'loadModel 2', 'promptStream 3', 'cancel 3', 'ping 4', 'shutdown 5'],
    );
  });

  test('an aborted call on a sidecar that answers nothing, not even ping: rejected, and the sidecar restarted', async () => {
    const { service } = fakeService('hang-after-load', { workerTimeoutMs: 0 });
    await service.loadModel('/fake.gguf');
    const pid = service.sidecarPid;
    assert.ok(pid !== undefined);
    const handle = service.prompt('hi');
    setTimeout(() => handle.cancel(), 50);
    await assert.rejects(handle, CancelTimeoutError);
    await until(() => !running(pid), 5000, 'the hung sidecar being killed');
    await service.dispose();
  });

  test('a sidecar that stops answering even ping is restarted, with its models reloaded, before the retry', async () => {
    const { service, received } = fakeService('hang-after-load');
    await service.loadModel('/fake.gguf');
    const outcome = await service.prompt('hi').catch((error: unknown) => error);
    await service.dispose();
    assert.equal((outcome as LLMServiceError).code, 'TIMEOUT');
    assert.equal(new Set(received().map((line) => line.split(' ')[0])).size, 2, 'a second sidecar process was started');
    assert.equal(received().filter((line) => / loadModel /.test(line)).length, 2, 'the model was loaded again');
  });

  test('a restarted sidecar whose reload times out is stopped, not left running; the model is forgotten', async () => {
    const marker = join(mkdtempSync(join(tmpdir(), 'load-once-')), 'loaded');
    const { service, received } = fakeService('load-once', {
      sidecar: { command: process.execPath, args: [FAKE_SIDECAR, 'load-once', marker] },
      loadTimeoutMs: 300,
    });
    await service.loadModel('/fake.gguf');
    process.kill(service.sidecarPid ?? 0, 'SIGKILL');
    await until(() => service.sidecarPid === undefined, 5000, 'the kill being noticed');
    await assert.rejects(service.listModels(), (error: LLMServiceError) => error.code === 'TIMEOUT');
    assert.deepEqual(await service.listModels(), [], 'the next sidecar is not asked to load it again');
    await service.dispose();
    const pids = new Set(received().map((line) => Number(line.split(' ')[0])));
    assert.ok(pids.size >= 2, 'a restart happened');
    await until(() => [...pids].every((pid) => !running(pid)), 5000, 'every fake sidecar exiting');
  });

  test('a sidecar that never answers initialize times out the start, twice, then fails', async () => {
    const service = new LlmService({
      sidecar: { command: process.execPath, args: ['-e', 'setInterval(() => {}, 1000)'] },
      logger: () => {},
      startTimeoutMs: 200,
      restart: { initialDelayMs: 10 },
    });
    const started = Date.now();
    await assert.rejects(service.prompt('hi'), /prompt timed out after retries \(2 attempts;/);
    assert.ok(Date.now() - started < 5000);
    await service.dispose();
  });
});

describe('LlmService supervision limits and bad output', () => {
  test('a sidecar that keeps crashing is restarted with backoff, then RESTART_LIMIT', async () => {
    const spawns = join(mkdtempSync(join(tmpdir(), 'crashing-')), 'spawns');
    const crash = `require('node:fs').appendFileSync(${JSON.stringify(spawns)}, Date.now() + '\\n'); process.exit(3)`;
    const service = new LlmService({
      sidecar: { command: process.execPath, args: ['-e', crash] },
      logger: () => {},
      restart: { maxRestarts: 3, initialDelayMs: 100 },
    });
    const codes: unknown[] = [];
    for (let i = 0; i < 5; i++) codes.push(await service.listModels().catch((error: LLMServiceError) => error.code));
    await service.dispose();
    assert.deepEqual(codes, ['SIDECAR_EXITED', 'SIDECAR_EXITED', 'SIDECAR_EXITED', 'SIDECAR_EXITED', 'RESTART_LIMIT']);
    // Each start waits for the doubled delay after the crash before it (which came after that start).
    const started = readFileSync(spawns, 'utf8').trim().split('\n').map(Number);
    const gaps = started.slice(1).map((at, i) => at - (started[i] ?? at));
    assert.equal(started.length, 4, 'no start past the limit');
    gaps.forEach((gap, i) => assert.ok(gap >= 100 * 2 ** i, `start ${i + 2} came ${gap} ms after the one before`));
  });

  test("an old loadModel call with node-llama-cpp's options compiles, loads, and logs what was left out", async () => {
    const { service, received, entries } = fakeService('silent');
    const info = await service.loadModel({
      modelPath: '/fake.gguf',
      contextSize: 256,
      useMlock: false,
      vocabOnly: false,
    });
    await service.dispose();
    assert.equal(info.modelId, 'fake');
    assert.ok(received().some((line) => / loadModel 2$/.test(line)));
    assert.ok(
      entries.some(
        (e) =>
          e.level === 'warn' &&
          e.message === 'loadModel: ignored option(s) the sidecar does not support: useMlock, vocabOnly',
      ),
    );
  });

  test('a non-JSON stdout line is logged as a protocol error; the host and the calls go on', async () => {
    const { logger, entries } = recordingLogger();
    const service = new LlmService({ sidecar: { command: process.execPath, args: [FAKE_SIDECAR, 'garbage'] }, logger });
    try {
      assert.deepEqual(await service.listModels(), []);
      assert.ok(entries.some((e) => e.level === 'error' && /not JSON: "this is not json"/.test(e.message)));
    } finally {
      await service.dispose();
    }
  });

  test('dispose shuts the sidecar down; later calls reject with CLOSED', async () => {
    const service = new LlmService({ sidecar: devSidecarCommand(), logger: () => {} });
    await service.listModels();
    assert.ok(service.sidecarPid !== undefined);
    await service.dispose();
    assert.equal(service.sidecarPid, undefined);
    await assert.rejects(service.listModels(), { code: 'CLOSED' });
  });
});
