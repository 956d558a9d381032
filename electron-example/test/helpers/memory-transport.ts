/**
 * An in-memory `Transport` for client tests: the test plays the sidecar.
 * `sent` holds what the client wrote; `deliver` hands the client a message as
 * if the sidecar wrote it; `exit` ends the channel like a process exit.
 */

import type { CloseEvent, ExitInfo, LLMServiceError, Transport } from '../../client/src/index.js';

export class MemoryTransport implements Transport {
  onmessage?: (message: unknown) => void;
  onerror?: (error: LLMServiceError) => void;
  onclose?: (event: CloseEvent) => void;
  readonly sent: Record<string, unknown>[] = [];
  /** Called for each message the client sends; the test's stand-in for the sidecar. */
  respond: ((message: Record<string, unknown>) => void) | undefined;
  private open = false;

  async start(): Promise<void> {
    this.open = true;
  }

  async send(message: unknown): Promise<void> {
    if (!this.open) throw new Error('closed');
    this.sent.push(message as Record<string, unknown>);
    this.respond?.(message as Record<string, unknown>);
  }

  async close(): Promise<void> {
    this.exit({ exitCode: 0, signal: null, stderrTail: [] }, true);
  }

  deliver(message: unknown): void {
    this.onmessage?.(message);
  }

  exit(exit: ExitInfo, expected = false): void {
    if (!this.open) return;
    this.open = false;
    this.onclose?.({ expected, exit });
  }

  /** The requests sent with this method, in order. */
  requests(method: string): Record<string, unknown>[] {
    return this.sent.filter((m) => m['method'] === method);
  }
}
