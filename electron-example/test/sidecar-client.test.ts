/** SidecarClient against the real Python sidecar and a tiny random model. */

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  type DownloadProgressParams,
  LLMServiceError,
  type LoadProgressParams,
  SidecarClient,
  type StreamChunkParams,
} from '../client/src/index.js';
import { MemoryTransport } from './helpers/memory-transport.js';
import {
  devSidecarCommand,
  GREEDY,
  recordingLogger,
  sidecarError,
  tempDir,
  TEST_LOAD,
  writeTinyModel,
} from './helpers/sidecar.js';

/** A JSON Schema whose every reply is short, so that even the random tiny model ends it (finishReason "stop"). */
const FLAG = {
  type: 'object',
  properties: { ok: { type: 'boolean' }, color: { enum: ['red', 'green', 'blue'] } },
  required: ['ok', 'color'],
  additionalProperties: false,
} as const;

/** Whether `value` is an instance of FLAG. */
function isFlag(value: unknown): boolean {
  const { ok, color, ...rest } = value as { ok?: unknown; color?: unknown };
  return (
    typeof ok === 'boolean' && FLAG.properties.color.enum.some((c) => c === color) && Object.keys(rest).length === 0
  );
}

function norm(vector: readonly number[]): number {
  return Math.hypot(...vector);
}

describe('SidecarClient on the real sidecar', () => {
  const models = tempDir();
  const { logger } = recordingLogger();
  let client: SidecarClient;
  const progress: LoadProgressParams[] = [];

  before(async () => {
    const tiny = await writeTinyModel(models.dir, 'tiny');
    client = await SidecarClient.spawn({ ...devSidecarCommand(), logger });
    await client.loadModel({ modelPath: tiny, ...TEST_LOAD }, { onLoadProgress: (p) => progress.push(p) });
  });
  after(async () => {
    await client.close();
    models.remove();
  });

  test('spawn initializes the sidecar before it returns', () => {
    assert.equal(client.info?.serverInfo.name, 'llama-sidecar');
    assert.equal(client.info?.protocolVersion, '1.2');
    assert.ok(client.info?.capabilities.methods.includes('promptStream'));
  });

  test('a stream arrives in order with exactly one final chunk, last, and its result joins the chunks', async () => {
    const chunks: StreamChunkParams[] = [];
    const result = await client.promptStream({ prompt: 'hello', maxTokens: 12, ...GREEDY }, (c) => chunks.push(c));
    assert.deepEqual(
      chunks.map((c) => c.index),
      chunks.map((_c, i) => i),
    );
    assert.deepEqual(
      chunks.map((c) => c.isFinal),
      [...chunks.slice(1).map(() => false), true],
    );
    const final = chunks.at(-1);
    assert.equal(final?.content, '');
    assert.equal(final?.finishReason, 'length');
    assert.deepEqual(final?.usage, result.usage);
    assert.equal(result.usage.completionTokens, 12);
    assert.equal(chunks.map((c) => c.content).join(''), result.text);
  });

  test('prompt returns the same text as the joined stream (greedy, fixed seed)', async () => {
    const params = { messages: [{ role: 'user', content: 'hi there' }], maxTokens: 20, ...GREEDY };
    const pieces: string[] = [];
    await client.promptStream(params, (c) => pieces.push(c.content));
    const whole = await client.prompt(params);
    assert.equal(whole.text, pieces.join(''));
    assert.ok(whole.text.length > 0);
  });

  test('an AbortSignal mid-stream cancels it: the result has finishReason "cancelled" and the text so far', async () => {
    const controller = new AbortController();
    const chunks: StreamChunkParams[] = [];
    const result = await client.promptStream(
      { prompt: 'hello', ...GREEDY },
      (chunk) => {
        chunks.push(chunk);
        if (chunks.length === 1) controller.abort();
      },
      { signal: controller.signal },
    );
    assert.equal(result.finishReason, 'cancelled');
    assert.equal(chunks.at(-1)?.finishReason, 'cancelled');
    assert.ok(result.usage.completionTokens < 1500, `${result.usage.completionTokens} tokens: not cancelled early`);
    assert.equal(chunks.map((c) => c.content).join(''), result.text);
  });

  test('concurrent streams on two models interleave on the wire, and each gets only its own chunks', async () => {
    // One model runs one prompt at a time; two models generate in parallel, so their chunks interleave.
    const [model] = (await client.listModels()).models;
    assert.ok(model !== undefined);
    await client.loadModel({ modelPath: model.modelPath, modelId: 'tiny-2', ...TEST_LOAD });
    try {
      const prompts = [
        { modelId: 'tiny', prompt: 'first prompt' },
        { modelId: 'tiny-2', prompt: 'a second, different prompt' },
        { modelId: 'tiny', prompt: 'third' },
        { modelId: 'tiny-2', prompt: 'and a fourth' },
      ];
      const sampling = { maxTokens: 200, ...GREEDY };
      const alone: string[] = [];
      for (const prompt of prompts) alone.push((await client.prompt({ ...prompt, ...sampling })).text);
      const seen = prompts.map((): StreamChunkParams[] => []);
      const arrival: number[] = [];
      const results = await Promise.all(
        prompts.map((prompt, i) =>
          client.promptStream({ ...prompt, ...sampling }, (c) => {
            seen[i]?.push(c);
            arrival.push(i);
          }),
        ),
      );
      const switches = arrival.filter((stream, n) => n > 0 && stream !== arrival[n - 1]).length;
      assert.ok(switches > prompts.length, `the streams did not interleave: ${switches} switches`);
      const ids = seen.map((chunks) => new Set(chunks.map((c) => c.requestId)));
      assert.deepEqual(
        ids.map((set) => set.size),
        [1, 1, 1, 1],
      );
      assert.equal(new Set(ids.flatMap((set) => [...set])).size, 4);
      for (const [i, chunks] of seen.entries()) {
        assert.deepEqual(
          chunks.map((c) => c.index),
          chunks.map((_c, n) => n),
        );
        assert.equal(chunks.map((c) => c.content).join(''), results[i]?.text);
        assert.equal(results[i]?.text, alone[i], `stream ${i} differs from the same prompt alone`);
      }
    } finally {
      await client.unloadModel({ modelId: 'tiny-2' });
    }
  });

  test('an error response carries the numeric code and data', async () => {
    const missing = path.join(models.dir, 'missing.gguf');
    await assert.rejects(client.loadModel({ modelPath: missing }), (error: unknown) => {
      assert.ok(error instanceof LLMServiceError);
      assert.equal(error.code, -32001);
      assert.deepEqual(error.data, { modelPath: missing });
      return true;
    });
  });

  test('loadModel sends its progress to onLoadProgress: rising, with its own request id, ending with 1', () => {
    assert.ok(progress.length >= 1);
    const values = progress.map((p) => p.progress);
    assert.ok(
      values.every((v, i) => v >= 0 && v <= 1 && (i === 0 || v > (values[i - 1] ?? 1))),
      `not rising: ${values.join(', ')}`,
    );
    assert.equal(values.at(-1), 1);
    assert.equal(new Set(progress.map((p) => p.requestId)).size, 1);
  });

  test('session methods: create, prompt with sessionId and text, get, set history, reset, close', async () => {
    const created = await client.createSession({ systemPrompt: 'be brief', contextSize: 1024 });
    const { sessionId } = created;
    assert.deepEqual(created, {
      sessionId,
      modelId: 'tiny',
      systemPrompt: 'be brief',
      contextSize: 1024,
      messages: [],
      droppedMessages: 0,
    });
    const chunks: StreamChunkParams[] = [];
    const first = await client.promptStream({ sessionId, text: 'hi', maxTokens: 6, ...GREEDY }, (c) => chunks.push(c));
    assert.equal(chunks.map((c) => c.content).join(''), first.text);
    const second = await client.prompt({ sessionId, text: 'and then?', maxTokens: 6, ...GREEDY });
    assert.ok(second.usage.promptTokens > first.usage.promptTokens, 'the second turn follows the first');
    assert.deepEqual((await client.getSession({ sessionId })).messages, [
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: first.text },
      { role: 'user', content: 'and then?' },
      { role: 'assistant', content: second.text },
    ]);
    assert.deepEqual((await client.listModels()).models[0]?.sessions, [sessionId]);
    const saved = [
      { role: 'user', content: 'a saved chat' },
      { role: 'assistant', content: 'restored' },
    ] as const;
    const set = await client.setSessionHistory({ sessionId, messages: [...saved] });
    assert.deepEqual(set.messages, saved);
    const reset = await client.resetSession({ sessionId });
    assert.deepEqual([reset.messages, reset.systemPrompt], [[], 'be brief']);
    assert.deepEqual(await client.closeSession({ sessionId }), { closed: true });
    assert.deepEqual(await client.closeSession({ sessionId }), { closed: false });
    assert.deepEqual((await client.listModels()).models[0]?.sessions, []);
  });

  test('an unknown session id is UnknownSessionId (-32013), with the id as data', async () => {
    const sessionId = 'no-such-session';
    const chunks: StreamChunkParams[] = [];
    const calls = [
      client.getSession({ sessionId }),
      client.resetSession({ sessionId }),
      client.setSessionHistory({ sessionId, messages: [] }),
      client.prompt({ sessionId, text: 'hi' }),
      client.promptStream({ sessionId, text: 'hi' }, (c) => chunks.push(c)),
    ];
    for (const call of calls) {
      await assert.rejects(call, (error: unknown) => {
        assert.ok(error instanceof LLMServiceError);
        assert.equal(error.code, -32013);
        assert.deepEqual(error.data, { sessionId });
        return true;
      });
    }
    // A failed stream ends with one final chunk saying "error", then the error response.
    assert.deepEqual(
      chunks.map((c) => [c.isFinal, c.finishReason]),
      [[true, 'error']],
    );
  });

  test('ping, listModels, cancel of an unknown id', async () => {
    assert.deepEqual(await client.ping(), {});
    assert.deepEqual(
      (await client.listModels()).models.map((m) => m.modelId),
      ['tiny'],
    );
    assert.deepEqual(await client.cancel('never-sent'), { cancelled: false });
  });

  test('token methods: countTokens matches a prompt, tokenize and detokenize round-trip, inspectModel', async () => {
    const { promptTokens } = await client.countTokens({ prompt: 'hello world' });
    const result = await client.prompt({ prompt: 'hello world', maxTokens: 1 });
    assert.equal(promptTokens, result.usage.promptTokens);
    const { tokens } = await client.tokenize({ text: 'hello world', addBos: false });
    assert.equal((await client.detokenize({ tokens })).text.trim(), 'hello world');
    const [model] = (await client.listModels()).models;
    const inspected = await client.inspectModel({ modelPath: model?.modelPath ?? '' });
    assert.equal(inspected.architecture, 'llama');
    assert.equal(inspected.parameterCount, 132_288);
  });

  test('embed: one vector per input, a string or an array; unit length by default, not with normalize: false', async () => {
    const texts = ['hello world', 'a second, longer text about something else'];
    const one = await client.embed({ input: texts[0] ?? '' });
    const many = await client.embed({ input: texts });
    const raw = await client.embed({ input: texts, normalize: false });
    assert.equal(one.embeddings.length, 1);
    assert.equal(many.embeddings.length, 2);
    assert.ok(many.promptTokens > one.promptTokens && one.promptTokens > 0);
    assert.equal(raw.promptTokens, many.promptTokens);
    const width = 64; // the tiny model's embedding length
    for (const vector of [...one.embeddings, ...many.embeddings, ...raw.embeddings]) assert.equal(vector.length, width);
    for (const vector of [...one.embeddings, ...many.embeddings]) assert.ok(Math.abs(norm(vector) - 1) < 1e-4);
    for (const [i, vector] of raw.embeddings.entries()) {
      const length = norm(vector);
      assert.ok(Math.abs(length - 1) > 0.1, `input ${i}: length ${length}, as if normalized`);
      // The same direction: normalizing the raw vector gives the default one.
      vector.forEach((x, n) => assert.ok(Math.abs(x / length - (many.embeddings[i]?.[n] ?? NaN)) < 1e-4));
    }
    one.embeddings[0]?.forEach((x, n) => assert.ok(Math.abs(x - (many.embeddings[0]?.[n] ?? NaN)) < 1e-4));
    assert.ok(Math.abs(norm((many.embeddings[0] ?? []).map((x, n) => x - (many.embeddings[1]?.[n] ?? 0)))) > 0.01);
  });

  test('prompt with a grammar: even the random model replies in it', async () => {
    for (const seed of [1, 2, 3]) {
      const result = await client.prompt({ prompt: 'hi', grammar: 'root ::= [a-c]{3,6} "!"', temperature: 1, seed });
      assert.match(result.text, /^[a-c]{3,6}!$/, `seed ${seed}`);
      assert.equal(result.finishReason, 'stop');
      assert.equal(result.json, undefined, 'json comes only with jsonSchema');
    }
  });

  test('prompt with jsonSchema: the reply satisfies it, and the result has it parsed as json', async () => {
    for (const seed of [1, 2, 3]) {
      const result = await client.prompt({ prompt: 'hi', jsonSchema: FLAG, maxTokens: 200, temperature: 1, seed });
      assert.equal(result.finishReason, 'stop', `seed ${seed}: ${JSON.stringify(result.text)}`);
      assert.deepEqual(result.json, JSON.parse(result.text));
      assert.ok(isFlag(result.json), `seed ${seed}: ${result.text}`);
    }
  });

  test('promptStream with jsonSchema: the chunks join to the text, and the final result has json', async () => {
    const chunks: StreamChunkParams[] = [];
    const params = { prompt: 'hi', jsonSchema: FLAG, maxTokens: 200, temperature: 1, seed: 4 };
    const result = await client.promptStream(params, (c) => chunks.push(c));
    assert.ok(chunks.length > 2, `${chunks.length} chunks`);
    assert.equal(chunks.map((c) => c.content).join(''), result.text);
    assert.equal(result.finishReason, 'stop');
    assert.deepEqual(result.json, JSON.parse(result.text));
    assert.ok(isFlag(result.json), result.text);
    const whole = await client.prompt(params);
    assert.deepEqual([whole.text, whole.json], [result.text, result.json], 'the same reply as prompt');
  });

  test("an invalid grammar is InvalidParams (-32602), data {field: 'grammar'}, with llama.cpp's reason", async () => {
    const params = { prompt: 'hi', grammar: 'root ::= yes |', maxTokens: 4 };
    const errors = [await sidecarError(client.prompt(params), -32602)];
    errors.push(
      await sidecarError(
        client.promptStream(params, () => {}),
        -32602,
      ),
    );
    for (const error of errors) {
      assert.deepEqual(error.data, { field: 'grammar' });
      assert.match(error.message, /Undefined rule identifier 'yes'/);
    }
  });

  test('embed on a model id that is not loaded is UnknownModelId (-32005), with the id as data', async () => {
    const error = await sidecarError(client.embed({ modelId: 'no-such-model', input: 'hi' }), -32005);
    assert.deepEqual(error.data, { modelId: 'no-such-model' });
  });

  test('downloadModel on a sidecar started without --models-dir is ModelPathNotAllowed (-32011)', async () => {
    // Nothing listens on the discard port: a download that got as far as connecting would fail with -32012.
    const url = 'http://127.0.0.1:9/model.gguf';
    const error = await sidecarError(client.downloadModel({ url }), -32011);
    assert.deepEqual(error.data, { modelPath: url });
    assert.match(error.message, /--models-dir/);
  });
});

test('close shuts the sidecar down gracefully (exit 0) and later calls reject with CLOSED', async () => {
  const client = await SidecarClient.spawn({ ...devSidecarCommand(), logger: () => {} });
  await client.close();
  const event = await client.closed;
  assert.equal(event.expected, true);
  assert.equal(event.exit.exitCode, 0);
  await assert.rejects(client.ping(), { code: 'CLOSED' });
});

test('a command that does not exist fails with SPAWN_FAILED', async () => {
  await assert.rejects(SidecarClient.spawn({ command: '/nonexistent/python', logger: () => {} }), {
    code: 'SPAWN_FAILED',
  });
});

test('each typed callback gets only its own notification method: chunks to onChunk, progress to onProgress and onLoadProgress', async () => {
  const transport = new MemoryTransport();
  transport.respond = (message) => {
    const { id, method } = message as { id: number; method: string };
    const note = (name: string, params: object): void =>
      transport.deliver({ jsonrpc: '2.0', method: name, params: { requestId: id, ...params } });
    if (method === 'initialize') transport.deliver({ jsonrpc: '2.0', id, result: { protocolVersion: '1.0' } });
    if (method === 'downloadModel') {
      note('downloadProgress', { bytes: 5, total: 9, bytesPerSecond: 1 });
      note('streamChunk', { index: 0, content: 'not a chunk of a download', isFinal: true, timestamp: 0 });
      note('downloadProgress', { bytes: 9, total: 9, bytesPerSecond: 2 });
      transport.deliver({ jsonrpc: '2.0', id, result: { complete: true } });
    }
    if (method === 'loadModel') {
      note('loadProgress', { progress: 0.5 });
      note('downloadProgress', { bytes: 1, bytesPerSecond: 1 });
      note('loadProgress', { progress: 1 });
      transport.deliver({ jsonrpc: '2.0', id, result: { modelId: 'm' } });
    }
    if (method === 'promptStream') {
      note('loadProgress', { progress: 0.5 });
      note('downloadProgress', { bytes: 1, bytesPerSecond: 1 });
      note('streamChunk', { index: 0, content: '', isFinal: true, timestamp: 0 });
      transport.deliver({ jsonrpc: '2.0', id, result: { text: '' } });
    }
  };
  const client = await SidecarClient.connect(transport, { logger: () => {} });
  const progress: DownloadProgressParams[] = [];
  await client.downloadModel({ url: 'http://x/m.gguf' }, { onProgress: (p) => progress.push(p) });
  assert.deepEqual(
    progress.map((p) => p.bytes),
    [5, 9],
  );
  const chunks: StreamChunkParams[] = [];
  await client.promptStream({ prompt: 'x' }, (c) => chunks.push(c));
  assert.deepEqual(
    chunks.map((c) => c.isFinal),
    [true],
  );
  const loading: LoadProgressParams[] = [];
  await client.loadModel({ modelPath: '/m.gguf' }, { onLoadProgress: (p) => loading.push(p) });
  assert.deepEqual(
    loading.map((p) => p.progress),
    [0.5, 1],
  );
  await client.close({ force: true });
});
