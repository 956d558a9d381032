/** The old call shapes and node-llama-cpp names → protocol params (pure). */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import type { LoadModelOptions } from '../client/src/index.js';
import {
  countTokensParams,
  generationParams,
  loadCallOptions,
  loadModelParams,
  type PromptOptions,
} from '../client/src/options.js';
import { recordingLogger, REPO_ROOT } from './helpers/sidecar.js';

test('the text is the user turn, after the system prompt and earlier messages', () => {
  const { logger } = recordingLogger();
  const history = [
    { role: 'user', content: 'hi' },
    { role: 'assistant', content: 'hello' },
  ];
  assert.deepEqual(generationParams('and now?', { systemPrompt: 'be brief', messages: history }, logger), {
    messages: [{ role: 'system', content: 'be brief' }, ...history, { role: 'user', content: 'and now?' }],
  });
  assert.deepEqual(generationParams('', { messages: history }, logger), { messages: history });
  assert.deepEqual(generationParams('Once upon', { raw: true, maxTokens: 5 }, logger), {
    prompt: 'Once upon',
    maxTokens: 5,
  });
});

test('sampling names pass through; node-llama-cpp names map onto the protocol', () => {
  const { logger, entries } = recordingLogger();
  const options: PromptOptions = {
    temperature: 0,
    topK: 5,
    topP: 0.5,
    minP: 0.1,
    seed: 7,
    modelId: 'm',
    stop: ['END'],
    customStopTriggers: ['\n\n', ['token', 'ids']],
    repeatPenalty: { penalty: 1.1 },
  };
  assert.deepEqual(generationParams('x', options, logger), {
    temperature: 0,
    topK: 5,
    topP: 0.5,
    minP: 0.1,
    seed: 7,
    modelId: 'm',
    repeatPenalty: 1.1,
    stop: ['END', '\n\n'],
    messages: [{ role: 'user', content: 'x' }],
  });
  assert.equal(generationParams('x', { repeatPenalty: false }, logger).repeatPenalty, 1);
  assert.deepEqual(entries, []);
});

test('unknown option names are logged and left out', () => {
  const { logger, entries } = recordingLogger();
  const params = generationParams('x', { maxTokens: 3, onTextChunks: () => {} } as PromptOptions, logger);
  assert.deepEqual(params, { maxTokens: 3, messages: [{ role: 'user', content: 'x' }] });
  assert.match(entries[0]?.message ?? '', /prompt: ignored option\(s\) the sidecar does not support: onTextChunks/);
  assert.deepEqual(loadModelParams('default', logger), { modelPath: 'default' });
});

test("node-llama-cpp's other names compile (no cast) and are left out with a warning", () => {
  const { logger, entries } = recordingLogger();
  const load = loadModelParams({ modelPath: '/m.gguf', contextSize: 512, useMlock: true, swaFullCache: true }, logger);
  assert.deepEqual(load, { modelPath: '/m.gguf', contextSize: 512 });
  const prompt = generationParams(
    'x',
    {
      repeatPenalty: { penalty: 1.1, frequencyPenalty: 0.2, presencePenalty: 0.1 },
      onToken: (tokens) => tokens.length,
      trimWhitespaceSuffix: true,
    },
    logger,
  );
  assert.deepEqual(prompt, { repeatPenalty: 1.1, messages: [{ role: 'user', content: 'x' }] });
  assert.deepEqual(
    entries.map((e) => [e.level, e.message]),
    [
      ['warn', 'loadModel: ignored option(s) the sidecar does not support: useMlock, swaFullCache'],
      ['warn', 'prompt: ignored option(s) the sidecar does not support: onToken, trimWhitespaceSuffix'],
      [
        'warn',
        'prompt: ignored option(s) the sidecar does not support: repeatPenalty.frequencyPenalty, repeatPenalty.presencePenalty',
      ],
    ],
  );
});

test("node-llama-cpp's flashAttention and defaultContextFlashAttention become the sidecar's flashAttention", () => {
  const { logger, entries } = recordingLogger();
  assert.deepEqual(loadModelParams({ modelPath: '/m.gguf', flashAttention: false }, logger), {
    modelPath: '/m.gguf',
    flashAttention: false,
  });
  assert.deepEqual(loadModelParams({ modelPath: '/m.gguf', defaultContextFlashAttention: true }, logger), {
    modelPath: '/m.gguf',
    flashAttention: true,
  });
  assert.deepEqual(
    loadModelParams({ modelPath: '/m.gguf', flashAttention: false, defaultContextFlashAttention: true }, logger),
    { modelPath: '/m.gguf', flashAttention: false },
  );
  assert.deepEqual(loadModelParams({ modelPath: '/m.gguf' }, logger), { modelPath: '/m.gguf' });
  assert.deepEqual(entries, []);
});

test('grammar and jsonSchema pass through to the params', () => {
  const { logger, entries } = recordingLogger();
  const jsonSchema = { type: 'object', required: ['name'] };
  assert.deepEqual(generationParams('x', { grammar: 'root ::= "a"', raw: true }, logger), {
    grammar: 'root ::= "a"',
    prompt: 'x',
  });
  assert.deepEqual(generationParams('x', { jsonSchema }, logger).jsonSchema, jsonSchema);
  assert.deepEqual(entries, []);
});

test("countTokens params are the prompt's: system prompt, history, the text as the user turn, or raw text", () => {
  const { logger, entries } = recordingLogger();
  const history = [{ role: 'user', content: 'hi' }];
  const options: PromptOptions = { systemPrompt: 's', messages: history, maxTokens: 5, temperature: 0, modelId: 'm' };
  const chat = {
    modelId: 'm',
    messages: [{ role: 'system', content: 's' }, ...history, { role: 'user', content: 'x' }],
  };
  assert.deepEqual(countTokensParams('x', options, logger), chat);
  assert.deepEqual(countTokensParams([{ role: 'user', content: 'x' }], options, logger), chat);
  assert.deepEqual(countTokensParams('x', { raw: true, maxTokens: 5 }, logger), { prompt: 'x' });
  assert.deepEqual(countTokensParams([{ role: 'user', content: 'x' }], { raw: true }, logger), {
    messages: [{ role: 'user', content: 'x' }],
  });
  assert.deepEqual(entries, []);
});

test("node-llama-cpp's gpuLayers 'auto' | 'max' and contextSize 'auto' compile: 'max' is every layer, 'auto' the sidecar's default, noted", () => {
  const { logger, entries } = recordingLogger();
  const schema = JSON.parse(
    readFileSync(path.join(REPO_ROOT, 'protocol', 'schema', 'methods', 'loadModel.json'), 'utf8'),
  ) as { $defs: { params: { properties: { gpuLayers: { maximum: number } } } } };
  const old: LoadModelOptions = { modelPath: '/m.gguf', gpuLayers: 'max', contextSize: 'auto', threads: 2 };
  assert.deepEqual(loadModelParams(old, logger), {
    modelPath: '/m.gguf',
    gpuLayers: schema.$defs.params.properties.gpuLayers.maximum,
    threads: 2,
  });
  assert.deepEqual(loadModelParams({ modelPath: '/m.gguf', gpuLayers: 'auto', contextSize: 512 }, logger), {
    modelPath: '/m.gguf',
    contextSize: 512,
  });
  assert.deepEqual(loadModelParams({ modelPath: '/m.gguf', gpuLayers: 3 }, logger), {
    modelPath: '/m.gguf',
    gpuLayers: 3,
  });
  assert.deepEqual(
    entries.map((e) => [e.level, e.message]),
    [
      ['info', "loadModel: contextSize 'auto' is approximated by the sidecar's default, min(training context, 4096)"],
      ['info', "loadModel: gpuLayers 'auto' is approximated by the sidecar's default, 0 (no GPU offload)"],
    ],
  );
});

test("node-llama-cpp's onTextChunk, and loadModel's onLoadProgress and loadSignal, are taken without a warning; the second argument's win", () => {
  const { logger, entries } = recordingLogger();
  const onTextChunk = (text: string): number => text.length;
  assert.deepEqual(generationParams('x', { onTextChunk }, logger), { messages: [{ role: 'user', content: 'x' }] });
  const onLoadProgress = (progress: number): number => progress;
  const loadSignal = new AbortController().signal;
  const old: LoadModelOptions = { modelPath: '/m.gguf', onLoadProgress, loadSignal };
  assert.deepEqual(loadModelParams(old, logger), { modelPath: '/m.gguf' });
  assert.deepEqual(entries, [], 'nothing to warn about');

  assert.deepEqual(loadCallOptions(old, { requestId: 'r' }), { requestId: 'r', onLoadProgress, signal: loadSignal });
  const mine = { onLoadProgress: (progress: number): number => -progress, signal: AbortSignal.abort() };
  assert.deepEqual(loadCallOptions(old, mine), mine);
  assert.deepEqual(loadCallOptions('/m.gguf', mine), mine);
  assert.deepEqual(loadCallOptions({ modelPath: '/m.gguf' }, {}), {});
});
