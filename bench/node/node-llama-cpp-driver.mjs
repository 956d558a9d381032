/**
 * Driver: node-llama-cpp 3.21.1 in this Node process (its prebuilt CPU binary).
 *
 * Loads the model with the same context size, threads and batch size as the
 * other systems and generates with `LlamaCompletion` on the raw prompt text,
 * tokenized with special tokens parsed (so it sees the same tokens as
 * llama-cpp-python), greedy (temperature 0), repeat penalty off (its default
 * is on; the sidecar's is off), stopping at an end-of-generation token or
 * `maxTokens`. Load time includes `getLlama()` (loading the native library),
 * as the other systems' include importing llama-cpp-python.
 */

import { getLlama, LlamaCompletion } from 'node-llama-cpp';

import { serve, Timeline } from './driver-io.mjs';

const state = {};

async function load({ modelPath, contextSize, threads, batchSize }) {
  const started = performance.now();
  state.llama = await getLlama({ gpu: false, build: 'never', logLevel: 'warn' });
  state.model = await state.llama.loadModel({ modelPath, gpuLayers: 0 });
  state.context = await state.model.createContext({ contextSize, threads, batchSize });
  state.completion = new LlamaCompletion({ contextSequence: state.context.getSequence() });
  return { loadMs: performance.now() - started, pids: [process.pid] };
}

async function generate({ prompt, maxTokens }) {
  const timeline = new Timeline();
  const tokens = state.model.tokenize(prompt, true);
  let produced = 0;
  await state.completion.generateCompletionWithMeta(tokens, {
    maxTokens,
    temperature: 0,
    repeatPenalty: false,
    onToken: (chunk) => {
      produced += chunk.length;
    },
    onTextChunk: (text) => timeline.text(text),
  });
  return timeline.result(produced, tokens.length);
}

serve(
  {
    start: async () => ({ pids: [process.pid], spawnToReadyMs: null }),
    load,
    generate,
  },
  async () => {
    await state.context?.dispose();
    await state.model?.dispose();
    await state.llama?.dispose();
  },
);
