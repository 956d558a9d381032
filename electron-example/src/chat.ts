/**
 * The terminal host: the same `LlmService` the Electron app uses, chatting on
 * stdout through a chat session, so every reply follows the earlier turns.
 *
 *   npm run chat -- ["first message"] [--max-tokens N] [--model PATH|default] [--system TEXT] [--verbose]
 *
 * Spawns the sidecar with this repository's venv python (or SIDECAR_PYTHON),
 * loads the model (its progress on stderr when that is a terminal), then takes
 * the first message from the command line and each further one from a line of
 * stdin (with a `> ` prompt in a terminal), until end of input or `/exit`;
 * `/reset` starts a new chat. Each reply is printed as it streams, then one
 * line with the token count, decode speed and time to first token. Ctrl+C
 * stops a reply (which is still printed, and kept in the chat); at the prompt
 * it quits.
 */

import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { LlmService, type Logger } from 'llama-sidecar-client';
import { devSidecarCommand } from './sidecar-command.js';

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      'max-tokens': { type: 'string', default: '200' },
      model: { type: 'string', default: 'default' },
      system: { type: 'string' },
      verbose: { type: 'boolean', default: false },
    },
  });
  const maxTokens = Number(values['max-tokens']);
  if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw new Error('--max-tokens must be a positive integer');
  const first = positionals.join(' ').trim();
  const interactive = process.stdin.isTTY === true;
  const logger: Logger = (level, message) => {
    if (values.verbose || level === 'warn' || level === 'error') process.stderr.write(`[${level}] ${message}\n`);
  };

  const service = new LlmService({ sidecar: devSidecarCommand(), logger, clientInfo: { name: 'chat' } });
  let reply: AbortController | undefined;
  const lines = createInterface({ input: process.stdin, output: interactive ? process.stdout : undefined });
  // Taken now, so that lines which arrive while the model loads wait for their turn.
  const nextLine = lines[Symbol.asyncIterator]();
  // Ctrl+C stops the reply that is streaming; with none, it ends the chat.
  const interrupt = (): void => (reply === undefined ? lines.close() : reply.abort());
  lines.on('SIGINT', interrupt);
  process.on('SIGINT', interrupt);
  try {
    const onLoadProgress = process.stderr.isTTY
      ? (progress: number) => process.stderr.write(`\rloading… ${Math.round(progress * 100)}%`)
      : undefined;
    const model = await service.loadModel(values.model, onLoadProgress === undefined ? {} : { onLoadProgress });
    if (onLoadProgress !== undefined) process.stderr.write('\r\x1b[K');
    const session = await service.createSession({
      modelId: model.modelId,
      ...(values.system === undefined ? {} : { systemPrompt: values.system }),
    });
    process.stdout.write(`[${model.name ?? model.modelId}: loaded in ${Math.round(model.loadMs)} ms]\n`);
    if (interactive) process.stdout.write('[one message per line; /reset starts a new chat, Ctrl+D quits]\n');

    const turn = async (text: string): Promise<void> => {
      reply = new AbortController();
      try {
        const result = await session.promptStream(text, (chunk) => process.stdout.write(chunk.content), {
          maxTokens,
          temperature: 0.2,
          seed: 42,
          signal: reply.signal,
        });
        const { usage, timings, finishReason } = result;
        process.stdout.write(
          `\n\n[${usage.completionTokens} tokens, ${timings.tokensPerSecond.toFixed(1)} tokens/s, ` +
            `time to first token ${Math.round(timings.ttftMs)} ms, finish: ${finishReason}]\n`,
        );
      } finally {
        reply = undefined;
      }
    };

    if (first !== '') {
      process.stdout.write(`> ${first}\n\n`);
      await turn(first);
    }
    if (interactive) lines.prompt();
    for (let next = await nextLine.next(); next.done !== true; next = await nextLine.next()) {
      const text = next.value.trim();
      if (text === '/exit') break;
      if (text === '/reset') {
        await session.reset();
        process.stdout.write('[new chat]\n');
      } else if (text !== '') {
        // A terminal shows what was typed; piped input is echoed, as the first message is.
        process.stdout.write(interactive ? '\n' : `> ${text}\n\n`);
        await turn(text);
      }
      if (interactive) lines.prompt();
    }
  } finally {
    lines.close();
    process.off('SIGINT', interrupt);
    await service.dispose();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`chat: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 1;
});
