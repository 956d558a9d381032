/**
 * Test fixtures shared by the files that run the real sidecar: its command,
 * tiny random models written with the repo's tests/tiny_model.py, temp dirs,
 * and a logger that keeps what it is told. Every helper is bounded in time.
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

import { type Logger, LLMServiceError, type LogLevel } from '../../client/src/index.js';
import { devPython, devSidecarCommand, PACKAGE_DIR, REPO_ROOT } from '../../src/sidecar-command.js';

export { devSidecarCommand, PACKAGE_DIR, REPO_ROOT };

const run = promisify(execFile);

/** Greedy, seeded: the same prompt gives the same text. */
export const GREEDY = { temperature: 0, seed: 1 } as const;

/** A fresh temp dir, removed by the returned cleanup. */
export function tempDir(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'sidecar-ts-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Write a random llama GGUF (tests/tiny_model.py): 0.5 MB by default, greedy text never ends
 * before maxTokens; `--eos always` ends every generation at once; `--hidden 384 --layers 6`
 * decodes slowly enough (a few hundred tokens/s) to act in the middle of a stream.
 */
export async function writeTinyModel(dir: string, name: string, args: readonly string[] = []): Promise<string> {
  const file = path.join(dir, `${name}.gguf`);
  await run(devPython(), [path.join(REPO_ROOT, 'tests', 'tiny_model.py'), file, ...args], { timeout: 60_000 });
  return file;
}

/** Tiny models load with one thread: two llama.cpp threads on two busy cores slow decoding many times over. */
export const TEST_LOAD = { threads: 1 } as const;

export interface Recorded {
  readonly level: LogLevel;
  readonly message: string;
}

/** A logger that keeps every entry (and echoes errors when DEBUG_SIDECAR is set). */
export function recordingLogger(): { logger: Logger; entries: Recorded[] } {
  const entries: Recorded[] = [];
  const logger: Logger = (level, message) => {
    entries.push({ level, message });
    if (process.env['DEBUG_SIDECAR']) console.error(`[${level}] ${message}`);
  };
  return { logger, entries };
}

/** Wait until `condition` holds, polling every 5 ms; fail the test after `ms`. */
export async function until(condition: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`${what} did not happen within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Whether a process with this id exists (kill 0 fails with ESRCH once it is gone and reaped). */
export function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    assert.equal((error as NodeJS.ErrnoException).code, 'ESRCH');
    return false;
  }
}

/** The error `call` rejects with, checked to be the sidecar's error response with this code. */
export async function sidecarError(call: Promise<unknown>, code: number): Promise<LLMServiceError> {
  const error: unknown = await call.then(
    (result) => assert.fail(`resolved with ${JSON.stringify(result).slice(0, 200)}, not error ${code}`),
    (reason: unknown) => reason,
  );
  assert.ok(error instanceof LLMServiceError, `not an LLMServiceError: ${String(error)}`);
  assert.equal(error.code, code, error.message);
  return error;
}
