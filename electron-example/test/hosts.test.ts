/** The terminal host (`npm run chat`) and the embedded default model through LlmService, when it is installed. */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';

import { type LlmChunk, LlmService, LLMServiceError } from '../src/client/index.js';
import { devSidecarCommand, GREEDY, PACKAGE_DIR, tempDir, writeTinyModel } from './helpers/sidecar.js';

const run = promisify(execFile);

test('npm run chat streams the reply, then prints tokens/s and time to first token', async () => {
  const models = tempDir();
  try {
    const tiny = await writeTinyModel(models.dir, 'tiny');
    const { stdout } = await run(
      process.execPath,
      ['--import', 'tsx', path.join('src', 'chat.ts'), '--model', tiny, '--max-tokens', '5', 'hello'],
      {
        cwd: PACKAGE_DIR,
        timeout: 60_000,
      },
    );
    const lines = stdout.trimEnd().split('\n');
    assert.match(lines[0] ?? '', /^\[tiny-random-llama: loaded in \d+ ms\]$/);
    assert.equal(lines[1], '> hello');
    assert.match(lines.at(-1) ?? '', /^\[5 tokens, [\d.]+ tokens\/s, time to first token \d+ ms, finish: length\]$/);
  } finally {
    models.remove();
  }
});

describe('the embedded default model (SmolLM2-135M), when installed', () => {
  const service = new LlmService({ sidecar: devSidecarCommand(), logger: () => {} });
  let missing: string | undefined;

  before(async () => {
    try {
      await service.loadModel('default');
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
});
