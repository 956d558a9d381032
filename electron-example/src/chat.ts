/**
 * The terminal host: the same `LlmService` the Electron app uses, streaming a
 * reply to stdout.
 *
 *   npm run chat -- "your prompt" [--max-tokens N] [--model PATH|default] [--verbose]
 *
 * Spawns the sidecar with this repository's venv python (or SIDECAR_PYTHON),
 * prints the reply as it streams, then one line with the token count, decode
 * speed and time to first token. Ctrl+C stops the reply and still prints it.
 */

import { parseArgs } from 'node:util';

import { LlmService, type Logger } from './client/index.js';
import { devSidecarCommand } from './sidecar-command.js';

const DEFAULT_PROMPT = 'Explain in three sentences why the sky is blue.';

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'max-tokens': { type: 'string', default: '200' },
      model: { type: 'string', default: 'default' },
      verbose: { type: 'boolean', default: false },
    },
  });
  const maxTokens = Number(values['max-tokens']);
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw new Error('--max-tokens must be a positive integer');
  const prompt = positionals.join(' ') || DEFAULT_PROMPT;
  const logger: Logger = (level, message) => {
    if (values.verbose || level === 'warn' || level === 'error') process.stderr.write(`[${level}] ${message}\n`);
  };

  const service = new LlmService({ sidecar: devSidecarCommand(), logger, clientInfo: { name: 'chat' } });
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());
  try {
    const model = await service.loadModel(values.model);
    process.stdout.write(`[${model.name ?? model.modelId}: loaded in ${Math.round(model.loadMs)} ms]\n> ${prompt}\n\n`);
    const result = await service.promptStream(prompt, (chunk) => process.stdout.write(chunk.content), {
      maxTokens,
      temperature: 0.2,
      seed: 42,
      signal: controller.signal,
    });
    const { usage, timings, finishReason } = result;
    process.stdout.write(
      `\n\n[${usage.completionTokens} tokens, ${timings.tokensPerSecond.toFixed(1)} tokens/s, ` +
        `time to first token ${Math.round(timings.ttftMs)} ms, finish: ${finishReason}]\n`,
    );
  } finally {
    await service.dispose();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`chat: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
