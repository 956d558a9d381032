/**
 * Driver: the sidecar through the TypeScript client (`SidecarClient` from
 * electron-example/client/dist/esm, built by `npm run build` in electron-example).
 *
 * Measures from this side of the pipe, like an Electron main process would
 * see it: spawn → `initialize` answered, `loadModel` round trip, each
 * `streamChunk` as it arrives, `ping` round trips, and several streams at once.
 */

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

import { SidecarClient } from '../../electron-example/client/dist/esm/index.js';

import { serve, Timeline } from './driver-io.mjs';

const state = {};

/** The sidecar's log lines and the client's own reports go to this driver's stderr (the log file). */
function logger(level, message) {
  process.stderr.write(`[${level}] ${message}\n`);
}

async function spawnSidecar(python, module = 'sidecar') {
  const started = performance.now();
  const client = await SidecarClient.spawn({ command: python, args: ['-m', module], logger });
  return { client, ms: performance.now() - started };
}

async function start({ python, module }) {
  const { client, ms } = await spawnSidecar(python, module);
  state.client = client;
  return { pids: [client.pid], spawnToReadyMs: ms };
}

async function load({ modelPath, contextSize, threads, batchSize, modelId }) {
  const started = performance.now();
  const info = await state.client.loadModel({
    modelPath,
    contextSize,
    threads,
    batchSize,
    modelId: modelId ?? undefined,
  });
  return {
    loadMs: performance.now() - started,
    serverLoadMs: info.loadMs,
    modelId: info.modelId,
    pids: [state.client.pid],
    backend: info.backend ?? null,
  };
}

async function generate({ prompt, maxTokens, modelId }) {
  const timeline = new Timeline();
  const result = await state.client.promptStream({ prompt, maxTokens, temperature: 0, modelId }, (chunk) =>
    timeline.text(chunk.content),
  );
  return timeline.result(result.usage.completionTokens, result.usage.promptTokens, result.timings);
}

async function ping({ count }) {
  const roundTrips = [];
  for (let i = 0; i < count; i++) {
    const started = process.hrtime.bigint();
    await state.client.ping();
    roundTrips.push(Number(process.hrtime.bigint() - started) / 1000);
  }
  return { rttUs: roundTrips };
}

/** The floor under `ping`: round trips of a ping line to a Python child that only echoes lines back. */
async function echoPing({ python, count }) {
  const echo = 'import sys\nfor line in sys.stdin.buffer:\n    sys.stdout.buffer.write(line)\n    sys.stdout.flush()';
  const child = spawn(python, ['-u', '-c', echo], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  let answer = () => {};
  lines.on('line', (line) => answer(JSON.parse(line)));
  const line = `${JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' })}\n`;
  const roundTrips = [];
  for (let i = 0; i < count; i++) {
    const started = process.hrtime.bigint();
    await new Promise((resolve) => {
      answer = resolve;
      child.stdin.write(line);
    });
    roundTrips.push(Number(process.hrtime.bigint() - started) / 1000);
  }
  child.stdin.end();
  return { rttUs: roundTrips };
}

/** One stream per entry of `prompts` (on the model of the same index), all sent at once. */
async function concurrent({ prompts, maxTokens, modelIds }) {
  const started = performance.now();
  const results = await Promise.all(
    prompts.map((prompt, index) => generate({ prompt, maxTokens, modelId: modelIds[index] })),
  );
  return {
    wallMs: performance.now() - started,
    completionTokens: results.map((result) => result.completionTokens),
    ttftMs: results.map((result) => result.ttftMs),
  };
}

/** Spawn, initialize, weigh and close `count` fresh sidecars, one after another. */
async function spawnProbe({ python, count }) {
  const times = [];
  const idle = [];
  for (let i = 0; i < count; i++) {
    const { client, ms } = await spawnSidecar(python);
    times.push(ms);
    idle.push(rssMb(client.pid));
    await client.close();
  }
  return { spawnToReadyMs: times, idleRssMb: idle };
}

/** Resident memory of a process now (Linux /proc), in MiB; null where it cannot be read. */
function rssMb(pid) {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) / 1024 : null;
  } catch {
    return null;
  }
}

serve({ start, load, generate, ping, echoPing, concurrent, spawnProbe }, async () => {
  await state.client?.close();
});
