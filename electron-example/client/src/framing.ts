/**
 * Newline-delimited framing over raw bytes: the pure part of the transport.
 *
 * `LineReader` splits a byte stream into lines at the byte level, so a
 * multi-byte UTF-8 character split across two `data` events is joined before
 * it is decoded. A trailing `\r` is stripped, blank lines are skipped, and a
 * line longer than the cap is skipped whole and reported as `LineTooLong`
 * (memory stays bounded). It knows bytes and lines; not JSON, not processes.
 */

export const DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024;

const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;

/** A line that was longer than the cap; its bytes were dropped. */
export interface LineTooLong {
  readonly tooLong: true;
  readonly size: number;
  readonly limit: number;
}

/** A complete line; invalid UTF-8 is decoded with U+FFFD and flagged. */
export interface Line {
  readonly tooLong: false;
  readonly text: string;
  readonly validUtf8: boolean;
}

export type Frame = Line | LineTooLong;

export class LineReader {
  private readonly strict = new TextDecoder('utf-8', { fatal: true });
  private readonly lossy = new TextDecoder('utf-8');
  private readonly frames: Frame[] = [];
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  /** Bytes of the current line already dropped because it passed the cap; 0 otherwise. */
  private skipped = 0;

  constructor(private readonly maxLineBytes: number = DEFAULT_MAX_LINE_BYTES) {}

  /** Take the next piece of the stream; complete lines become readable with `read`. */
  append(chunk: Uint8Array): void {
    let start = 0;
    for (let end = chunk.indexOf(NEWLINE); end !== -1; end = chunk.indexOf(NEWLINE, start)) {
      this.endLine(chunk.subarray(start, end));
      start = end + 1;
    }
    this.keep(chunk.subarray(start));
  }

  /** The oldest complete frame, or undefined when none is ready. */
  read(): Frame | undefined {
    return this.frames.shift();
  }

  /** End of stream: a last line without `\n` still counts (the peer may exit right after it). */
  flush(): void {
    if (this.pendingBytes > 0 || this.skipped > 0) this.endLine(new Uint8Array(0));
  }

  private keep(rest: Uint8Array): void {
    if (rest.length === 0) return;
    if (this.skipped > 0 || this.pendingBytes + rest.length > this.maxLineBytes) {
      this.skipped += this.pendingBytes + rest.length;
      this.pending = [];
      this.pendingBytes = 0;
      return;
    }
    // Copy: the caller may reuse the chunk's memory (Node's Buffer pool does).
    this.pending.push(rest.slice());
    this.pendingBytes += rest.length;
  }

  private endLine(tail: Uint8Array): void {
    const size = this.skipped + this.pendingBytes + tail.length;
    if (this.skipped > 0 || size > this.maxLineBytes) {
      this.frames.push({ tooLong: true, size, limit: this.maxLineBytes });
    } else {
      const bytes = stripCarriageReturn(this.pending.length > 0 ? concat([...this.pending, tail]) : tail);
      if (bytes.length > 0) this.frames.push(this.decode(bytes));
    }
    this.pending = [];
    this.pendingBytes = 0;
    this.skipped = 0;
  }

  private decode(bytes: Uint8Array): Line {
    try {
      return { tooLong: false, text: this.strict.decode(bytes), validUtf8: true };
    } catch {
      return { tooLong: false, text: this.lossy.decode(bytes), validUtf8: false };
    }
  }
}

/** One message as a protocol line: compact JSON and `\n` (JSON.stringify never emits a raw newline). */
export function encodeMessage(message: unknown): Uint8Array {
  return new TextEncoder().encode(`${JSON.stringify(message)}\n`);
}

function stripCarriageReturn(bytes: Uint8Array): Uint8Array {
  return bytes.length > 0 && bytes[bytes.length - 1] === CARRIAGE_RETURN ? bytes.subarray(0, -1) : bytes;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}
