/**
 * Keeps one healthy `SidecarClient` available and restarts it after a crash.
 *
 * The sidecar is started lazily by the first call that needs it and again by
 * the first call after it died. Restarts are bounded: each crash (or failed
 * start) within the window doubles the delay before the next start, and past
 * `maxRestarts` crashes in the window calls fail with `RESTART_LIMIT` until
 * the window has passed. What a fresh sidecar needs (models) is the `start`
 * callback's business; this module knows when to start, not what to load.
 * `dispose` ends a backoff wait at once, and a start on its way (through the
 * signal `start` gets) before it loads anything more.
 */

import { disposedError, LLMServiceError } from './errors.js';
import type { Logger } from './log.js';
import type { SidecarClient } from './sidecar-client.js';

export interface RestartPolicy {
  /** Crashes tolerated within `windowMs`; one more and calls fail with RESTART_LIMIT. */
  readonly maxRestarts: number;
  readonly windowMs: number;
  /** Delay before the first restart after a crash; doubled for each further crash in the window. */
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
}

export const DEFAULT_RESTART_POLICY: RestartPolicy = {
  maxRestarts: 5,
  windowMs: 60_000,
  initialDelayMs: 200,
  maxDelayMs: 5_000,
};

export class Supervisor {
  private client: SidecarClient | undefined;
  private starting: Promise<SidecarClient> | undefined;
  private crashes: number[] = [];
  private disposed = false;
  /** Fires on `dispose`: ends the backoff wait, and tells `start` to stop. */
  private readonly disposing = new AbortController();

  constructor(
    /** Start a sidecar and make it ready; when `signal` fires, close it and throw (the service was disposed). */
    private readonly start: (signal: AbortSignal) => Promise<SidecarClient>,
    private readonly policy: RestartPolicy,
    private readonly logger: Logger,
  ) {}

  /** The running client, starting (or restarting) the sidecar first if needed. */
  acquire(): Promise<SidecarClient> {
    if (this.disposed) return Promise.reject(disposedError());
    this.noteExit(this.client);
    if (this.client !== undefined) return Promise.resolve(this.client);
    this.starting ??= this.startAfterBackoff().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  /** The client of the running sidecar, if there is one. */
  get current(): SidecarClient | undefined {
    this.noteExit(this.client);
    return this.client;
  }

  /** True when no sidecar runs or starts (and the service was not disposed): a call would start one. */
  get idle(): boolean {
    return !this.disposed && this.current === undefined && this.starting === undefined;
  }

  /** Kill a client that stopped answering; the next `acquire` starts a new one. */
  async discard(client: SidecarClient): Promise<void> {
    if (this.client !== client) return;
    this.client = undefined;
    this.crashes.push(Date.now());
    await client.close({ force: true });
  }

  /** Shut the sidecar down gracefully; later calls fail with CLOSED. */
  async dispose(): Promise<void> {
    this.disposed = true;
    this.disposing.abort();
    const client = this.client ?? (await this.starting?.catch(() => undefined));
    this.client = undefined;
    await client?.close();
  }

  private async startAfterBackoff(): Promise<SidecarClient> {
    const delay = this.nextDelayMs();
    if (delay === undefined) {
      const { maxRestarts, windowMs } = this.policy;
      const message = `The sidecar failed ${this.crashes.length} times within ${windowMs} ms (limit ${maxRestarts}); not restarting it yet.`;
      throw new LLMServiceError('RESTART_LIMIT', message, { crashes: this.crashes.length, windowMs });
    }
    if (delay > 0) {
      this.logger('info', `restarting the sidecar in ${delay} ms`);
      await sleep(delay, this.disposing.signal);
    }
    if (this.disposed) throw disposedError();
    let client: SidecarClient;
    try {
      client = await this.start(this.disposing.signal);
    } catch (error) {
      this.crashes.push(Date.now());
      throw error;
    }
    if (this.disposed) {
      await client.close();
      throw disposedError();
    }
    this.watch(client);
    return client;
  }

  private watch(client: SidecarClient): void {
    this.client = client;
    void client.closed.then(() => this.noteExit(client));
  }

  /**
   * Forget `client` if it is the current one and has exited, counting a crash. Called when the
   * exit is heard of and by `acquire`, which may run first: a caller whose call was just
   * rejected by the exit can call again before the `closed` promise's handlers run.
   */
  private noteExit(client: SidecarClient | undefined): void {
    const event = client?.exit;
    if (client === undefined || client !== this.client || event === undefined) return;
    this.client = undefined;
    if (!event.expected) {
      this.crashes.push(Date.now());
      this.logger(
        'error',
        `the sidecar exited unexpectedly (code ${event.exit.exitCode}, signal ${event.exit.signal})`,
      );
    }
  }

  /** How long to wait before the next start; undefined past the restart limit. */
  private nextDelayMs(): number | undefined {
    const now = Date.now();
    this.crashes = this.crashes.filter((at) => now - at < this.policy.windowMs);
    const count = this.crashes.length;
    if (count === 0) return 0;
    if (count > this.policy.maxRestarts) return undefined;
    const backoff = Math.min(this.policy.initialDelayMs * 2 ** (count - 1), this.policy.maxDelayMs);
    const sinceLastCrash = now - (this.crashes[count - 1] ?? now);
    return Math.max(backoff - sinceLastCrash, 0);
  }
}

/** Wait `ms`, or until `signal` fires. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, signal.aborted ? 0 : ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
