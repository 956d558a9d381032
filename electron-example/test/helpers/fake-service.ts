/** An LlmService over test/fixtures/fake-sidecar.mjs, and what that fake received. */

import path from 'node:path';

import { LlmService, type LlmServiceOptions, type Logger } from '../../client/src/index.js';
import { PACKAGE_DIR, type Recorded, recordingLogger } from './sidecar.js';

export const FAKE_SIDECAR = path.join(PACKAGE_DIR, 'test', 'fixtures', 'fake-sidecar.mjs');

/**
 * A service whose sidecar is the fake in `mode` (300 ms worker timeout, and as long to wait for the
 * answer to a cancel). `received()` lists what the fakes got, as "PID METHOD ID"; dispose the
 * service first, so that every line was read. `entries` is everything logged; `options.logger`,
 * if given, is told everything too, as it happens.
 */
export function fakeService(
  mode: string,
  options: Partial<LlmServiceOptions> = {},
): { service: LlmService; received: () => string[]; entries: Recorded[] } {
  const { logger: record, entries } = recordingLogger();
  const { logger: also, ...rest } = options;
  const logger: Logger = (level, message) => {
    record(level, message);
    also?.(level, message);
  };
  const service = new LlmService({
    sidecar: { command: process.execPath, args: [FAKE_SIDECAR, mode] },
    workerTimeoutMs: 300,
    cancelGraceMs: 300,
    closeGraceMs: 300,
    restart: { initialDelayMs: 10 },
    ...rest,
    logger,
  });
  const received = (): string[] =>
    entries.flatMap((e) => /fake (\d+) received (.*)$/.exec(e.message)?.slice(1, 3).join(' ') ?? []);
  return { service, received, entries };
}

/** The fake's command in `mode` with a MARKER file argument (for the modes that need one). */
export function fakeWithMarker(mode: string, marker: string): LlmServiceOptions['sidecar'] {
  return { command: process.execPath, args: [FAKE_SIDECAR, mode, marker] };
}
