/**
 * A `Transport` over a child process's stdio: the sidecar as the peer.
 *
 * It only manages the child: spawns it (hidden window on Windows), frames
 * stdout into JSON messages, always drains stderr (forwarded to the logger,
 * its tail kept for crash reports: stderr-tail.ts), and closes it with stdin
 * end, then SIGTERM, then SIGKILL, waiting between steps. It knows
 * nothing of JSON-RPC: ids, methods and errors belong to the layer above.
 */

import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

import { type ExitInfo, LLMServiceError } from './errors.js';
import { DEFAULT_MAX_LINE_BYTES, encodeMessage, type Frame, LineReader } from './framing.js';
import { defaultLogger, type Logger, type LogLevel } from './log.js';
import { StderrTail } from './stderr-tail.js';
import type { CloseEvent, Transport } from './transport.js';

/** The environment variable that tells the sidecar whose death to outlive by no more than a moment. */
export const PARENT_PID_ENV = 'LLAMA_SIDECAR_PARENT_PID';

/** How to start the sidecar: the venv's python with `-m sidecar`, or a packaged executable. */
export interface SidecarCommand {
  readonly command: string;
  readonly args?: readonly string[] | undefined;
  readonly cwd?: string | undefined;
  /** The child's whole environment; the parent's when absent. `LLAMA_SIDECAR_PARENT_PID` is added either way. */
  readonly env?: NodeJS.ProcessEnv | undefined;
}

/** Every option may be `undefined` (its default), as `SidecarClientOptions`' may. */
export interface ProcessTransportOptions extends SidecarCommand {
  readonly logger?: Logger | undefined;
  /** How many stderr lines to keep for crash reports (default 40; a model load's metadata dump is not kept). */
  readonly stderrTailLines?: number | undefined;
  /** Longest stdout line accepted; longer ones are dropped and reported (default 64 MiB). */
  readonly maxLineBytes?: number | undefined;
  /** How long `close()` waits after ending stdin, and again after SIGTERM (default 2000 ms). */
  readonly closeGraceMs?: number | undefined;
}

const MAX_STDERR_LINE_BYTES = 64 * 1024;
const EXCERPT_CHARS = 200;
/**
 * After 'exit', how long to wait for the pipes to close before destroying them, which ends the
 * transport (and rejects every pending call). They close at once unless another process (a
 * grandchild the sidecar started) holds them open. What the sidecar wrote before it exited is
 * in the pipe already, at most the pipe's buffer (64 KiB on Linux: a longer write blocks until
 * read), and is read in the next turns of the event loop; 200 ms leaves room for a busy loop and
 * keeps "pending calls reject within 1 s of a crash" true with a grandchild too.
 */
const PIPE_CLOSE_MS = 200;

export class ProcessTransport implements Transport {
  onmessage?: (message: unknown) => void;
  onerror?: (error: LLMServiceError) => void;
  onclose?: (event: CloseEvent) => void;

  private child: ChildProcessWithoutNullStreams | undefined;
  private readonly stdoutLines: LineReader;
  private readonly stderrLines = new LineReader(MAX_STDERR_LINE_BYTES);
  private readonly tail: StderrTail;
  private readonly logger: Logger;
  private closing = false;
  private exitInfo: ExitInfo | undefined;
  private readonly exited: Promise<void>;
  private markExited!: () => void;

  constructor(private readonly options: ProcessTransportOptions) {
    this.logger = options.logger ?? defaultLogger;
    this.stdoutLines = new LineReader(options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES);
    this.tail = new StderrTail(options.stderrTailLines ?? 40);
    this.exited = new Promise((resolve) => {
      this.markExited = resolve;
    });
  }

  /** The child's process id while it runs. */
  get pid(): number | undefined {
    return this.exitInfo === undefined ? this.child?.pid : undefined;
  }

  async start(): Promise<void> {
    if (this.child !== undefined) throw new Error('ProcessTransport.start() was already called');
    const { command, args = [], cwd } = this.options;
    // Our pid, so that the sidecar outlives us by no more than a moment even if we die before it runs.
    const env = { ...(this.options.env ?? process.env), [PARENT_PID_ENV]: String(process.pid) };
    const child = spawn(command, args, { cwd, env, stdio: 'pipe', windowsHide: true });
    this.child = child;
    try {
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
    } catch (error) {
      const message = `Could not start the sidecar (${command}): ${(error as Error).message}`;
      this.exitInfo = { exitCode: null, signal: null, stderrTail: [] };
      this.markExited();
      throw new LLMServiceError('SPAWN_FAILED', message, { command, args, cwd }, { cause: error });
    }
    child.on('error', (error) => this.logger('error', `sidecar process error: ${error.message}`));
    // A write to a dead child fails with EPIPE here; the 'close' event reports the exit.
    child.stdin.on('error', (error) => this.logger('debug', `sidecar stdin: ${error.message}`));
    child.stdout.on('data', (chunk: Buffer) => this.onStdout(chunk));
    child.stdout.on('end', () => this.onStdout(undefined));
    child.stderr.on('data', (chunk: Buffer) => this.onStderr(chunk));
    child.stderr.on('end', () => this.onStderr(undefined));
    child.once('exit', () => setTimeout(() => this.destroyPipes(), PIPE_CLOSE_MS).unref());
    child.once('close', (code, signal) => this.finish(code, signal));
  }

  send(message: unknown): Promise<void> {
    return this.write(encodeMessage(message));
  }

  /** Write raw bytes as they are (the protocol vectors send lines that are not JSON). */
  write(data: Uint8Array): Promise<void> {
    const child = this.child;
    if (child === undefined || this.exitInfo !== undefined || !child.stdin.writable) {
      return Promise.reject(new LLMServiceError('CLOSED', 'The sidecar is not running.'));
    }
    return new Promise((resolve, reject) => {
      child.stdin.write(data, (error) => {
        if (error) reject(new LLMServiceError('CLOSED', `Writing to the sidecar failed: ${error.message}`));
        else resolve();
      });
    });
  }

  async close(options: { force?: boolean } = {}): Promise<void> {
    const child = this.child;
    if (child === undefined || this.exitInfo !== undefined) return;
    this.closing = true;
    const grace = this.options.closeGraceMs ?? 2000;
    if (!options.force) {
      child.stdin.end();
      if (await this.waitForExit(grace)) return;
      this.logger('warn', `the sidecar did not exit ${grace} ms after stdin closed; sending SIGTERM`);
      child.kill('SIGTERM');
      if (await this.waitForExit(grace)) return;
      this.logger('warn', 'the sidecar ignored SIGTERM; sending SIGKILL');
    }
    child.kill('SIGKILL');
    await this.waitForExit(grace);
  }

  private waitForExit(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    });
    return Promise.race([this.exited.then(() => true), timeout]).finally(() => clearTimeout(timer));
  }

  private onStdout(chunk: Buffer | undefined): void {
    if (chunk === undefined) this.stdoutLines.flush();
    else this.stdoutLines.append(chunk);
    for (let frame = this.stdoutLines.read(); frame !== undefined; frame = this.stdoutLines.read()) {
      this.deliver(frame);
    }
  }

  private deliver(frame: Frame): void {
    if (frame.tooLong) {
      this.reportBadOutput(`a stdout line of ${frame.size} bytes exceeds the ${frame.limit}-byte limit; dropped`);
    } else if (!frame.validUtf8) {
      this.reportBadOutput(`a stdout line is not valid UTF-8: ${excerpt(frame.text)}`);
    } else {
      let message: unknown;
      try {
        message = JSON.parse(frame.text);
      } catch {
        this.reportBadOutput(`a stdout line is not JSON: ${excerpt(frame.text)}`);
        return;
      }
      this.onmessage?.(message);
    }
  }

  private reportBadOutput(what: string): void {
    this.onerror?.(new LLMServiceError('PROTOCOL_ERROR', `The sidecar broke the protocol: ${what}.`));
  }

  private onStderr(chunk: Buffer | undefined): void {
    if (chunk === undefined) this.stderrLines.flush();
    else this.stderrLines.append(chunk);
    for (let frame = this.stderrLines.read(); frame !== undefined; frame = this.stderrLines.read()) {
      const line = frame.tooLong ? `[${frame.size} bytes of stderr skipped]` : frame.text;
      this.tail.push(line);
      this.logger(stderrLevel(line), `sidecar: ${line}`);
    }
  }

  private destroyPipes(): void {
    this.child?.stdout.destroy();
    this.child?.stderr.destroy();
  }

  private finish(exitCode: number | null, signal: NodeJS.Signals | null): void {
    this.exitInfo = { exitCode, signal, ...this.tail.snapshot() };
    this.markExited();
    this.onclose?.({ expected: this.closing, exit: this.exitInfo });
  }
}

/** The sidecar logs as "sidecar LEVEL logger: text"; llama.cpp's own lines have no prefix. */
function stderrLevel(line: string): LogLevel {
  const level = /^sidecar (DEBUG|INFO|WARNING|ERROR|CRITICAL) /.exec(line)?.[1];
  if (level === 'INFO') return 'info';
  if (level === 'WARNING') return 'warn';
  if (level === 'ERROR' || level === 'CRITICAL') return 'error';
  return 'debug';
}

function excerpt(text: string): string {
  return JSON.stringify(text.length > EXCERPT_CHARS ? `${text.slice(0, EXCERPT_CHARS)}…` : text);
}
