/** An LlmService over test/fixtures/fake-sidecar.mjs, and what that fake received. */

import path from 'node:path';

import { LlmService, type LlmServiceOptions } from '../../src/client/index.js';
import { PACKAGE_DIR, type Recorded, recordingLogger } from './sidecar.js';

export const FAKE_SIDECAR = path.join(PACKAGE_DIR, 'test', 'fixtures', 'fake-sidecar.mjs');

/**
 * A service whose sidecar is the fake in `mode` (300 ms worker timeout, and as long to wait for the
 * answer to a cancel). `received()` lists what the fakes got, as "PID METHOD ID"; dispose the
 * service first, so that every line was read. `entries` is everything logged.
 */
export function fakeService(
  mode: string,
  options: Partial<LlmServiceOptions> = {},
): { service: LlmService; received: () => string[]; entries: Recorded[] } {
  const { logger, entries } = recordingLogger();
  const service = new LlmService({
    sidecar: { command: process.execPath, args: [FAKE_SIDECAR, mode] },
    logger,
    workerTimeoutMs: 300,
    cancelGraceMs: 300,
    closeGraceMs: 300,
    restart: { initialDelayMs: 10 },
    ...options,
  });
  const received = (): string[] =>
    entries.flatMap((e) => /fake (\d+) received (.*)$/.exec(e.message)?.slice(1, 3).join(' ') ?? []);
  return { service, received, entries };
}
