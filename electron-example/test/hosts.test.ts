/**
 * The terminal host (`npm run chat`), and the embedded default model through LlmService when it is
 * installed: chat, a JSON Schema reply, embeddings.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';

import { type LlmChunk, LlmService, LLMServiceError } from '../client/src/index.js';
import { devSidecarCommand, GREEDY, PACKAGE_DIR, tempDir, TEST_LOAD, writeTinyModel } from './helpers/sidecar.js';

const run = promisify(execFile);

/** Run `npm run chat`'s script with `args`, `input` on its stdin (then closed); its stdout. */
async function runChat(args: readonly string[], input: string): Promise<string> {
  const running = run(process.execPath, ['--import', 'tsx', path.join('src', 'chat.ts'), ...args], {
    cwd: PACKAGE_DIR,
    timeout: 60_000,
  });
  running.child.stdin?.end(input);
  return (await running).stdout;
}

const STATS = /^\[5 tokens, [\d.]+ tokens\/s, time to first token \d+ ms, finish: length\]$/;

test('npm run chat streams the reply, then prints tokens/s and time to first token', async () => {
  const models = tempDir();
  try {
    const tiny = await writeTinyModel(models.dir, 'tiny');
    const stdout = await runChat(['--model', tiny, '--max-tokens', '5', 'hello'], '');
    const lines = stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^\[tiny-random-llama: loaded in \d+ ms\]$/);
    assert.equal(lines[1], '> hello');
    assert.match(lines.at(-1) ?? '', STATS);
  } finally {
    models.remove();
  }
});

test('npm run chat is a chat: each line of stdin is the next turn; /reset starts a new chat', async () => {
  const models = tempDir();
  try {
    const tiny = await writeTinyModel(models.dir, 'tiny');
    const stdout = await runChat(
      ['--model', tiny, '--max-tokens', '5', '--system', 'be brief', 'hello'],
      'and then?\n\n/reset\nagain\n',
    );
    const lines = stdout.trimEnd().split('\n');
    assert.deepEqual(
      lines.filter((line) => line.startsWith('> ') || line === '[new chat]'),
      ['> hello', '> and then?', '[new chat]', '> again'],
    );
    assert.equal(lines.filter((line) => STATS.test(line)).length, 3, stdout);
    assert.match(lines.at(-1) ?? '', STATS);
  } finally {
    models.remove();
  }
});

describe('the embedded default model (SmolLM2-135M), when installed', () => {
  const service = new LlmService({ sidecar: devSidecarCommand(), logger: () => {} });
  let missing: string | undefined;

  before(async () => {
    try {
      await service.loadModel({ modelPath: 'default', ...TEST_LOAD });
    } catch (error) {
      if (!(error instanceof LLMServiceError && error.code === -32001)) throw error;
      missing = `the default model is not installed: ${error.message}`;
    }
  });
  after(() => service.dispose());

  test('a chat reply streams and matches prompt (greedy)', async (t) => {
    if (missing !== undefined) return t.skip(missing);
    const chunks: LlmChunk[] = [];
    const options = { maxTokens: 24, ...GREEDY };
    const result = await service.promptStream('What is the capital of France?', (c) => chunks.push(c), options);
    assert.ok(result.text.length > 0 && ['stop', 'length'].includes(result.finishReason));
    assert.equal(chunks.map((c) => c.content).join(''), result.text);
    assert.ok(result.timings.tokensPerSecond > 0);
    assert.equal(await service.prompt('What is the capital of France?', options), result.text);
  });

  test('a jsonSchema reply comes parsed as json, from promptWithResult and from promptStream', async (t) => {
    if (missing !== undefined) return t.skip(missing);
    const person = {
      type: 'object',
      properties: { name: { type: 'string' }, age: { type: 'integer', minimum: 0 } },
      required: ['name', 'age'],
    };
    const text = 'Invent a person. Reply in JSON with their name and age.';
    const options = { jsonSchema: person, maxTokens: 120, timeoutMs: 120_000, ...GREEDY };
    const result = await service.promptWithResult(text, options);
    assert.equal(result.finishReason, 'stop', result.text);
    const json = result.json as { name?: unknown; age?: unknown };
    assert.equal(typeof json.name, 'string');
    assert.ok(Number.isInteger(json.age), `age ${JSON.stringify(json.age)}`);
    assert.deepEqual(JSON.parse(result.text), result.json);
    let streamed = '';
    const final = await service.promptStream(text, (c) => (streamed += c.content), options);
    assert.equal(streamed, result.text, 'greedy: the stream gives the same reply');
    assert.deepEqual(final.json, result.json);
  });

  test('embed: one normalized vector per text; cat is nearer kitten than stocks', async (t) => {
    if (missing !== undefined) return t.skip(missing);
    const texts = ['The cat sat on the mat.', 'A kitten rested on the rug.', 'Stock prices fell sharply today.'];
    const { embeddings, promptTokens } = await service.embed(texts);
    assert.equal(embeddings.length, 3);
    const [cat = [], kitten = [], stocks = []] = embeddings;
    const dot = (a: number[], b: number[]): number => a.reduce((sum, x, i) => sum + x * (b[i] ?? NaN), 0);
    assert.equal(cat.length, 576, "SmolLM2-135M's width");
    for (const vector of embeddings) assert.ok(Math.abs(Math.sqrt(dot(vector, vector)) - 1) < 1e-4);
    assert.ok(dot(cat, kitten) > dot(cat, stocks), `cat·kitten ${dot(cat, kitten)}, cat·stocks ${dot(cat, stocks)}`);
    assert.ok(promptTokens > 15);
  });
});
