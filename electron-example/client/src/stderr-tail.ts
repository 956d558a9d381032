/**
 * What the client keeps of the sidecar's stderr for a crash report.
 *
 * The sidecar logs lines as `sidecar LEVEL logger: text`. llama.cpp's own
 * messages come through its log callback as the `sidecar.llama` logger (its
 * errors at ERROR, its report of what it does at DEBUG); llama-cpp-python's
 * prints come as lines of their own; a native crash writes plain lines
 * (`file.c:123: GGML_ASSERT(…) failed`, a backtrace). This module keeps the
 * last lines worth reading, without the model-metadata dump of a load
 * (llama.cpp's `llama_model_loader: - kv …` and `print_info: …` lines, and the
 * rest of its DEBUG report, over 2,000 lines for a 135M model; llama-cpp-python's
 * `Model metadata: {…}` and its chat template print), and the last llama.cpp
 * error line among them. It knows the shapes of lines, not processes or errors.
 */

/** `sidecar LEVEL logger: text`, as the sidecar's logging formats every record. */
const LOG_LINE = /^sidecar (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.*)$/;
/** ggml_abort's first line (GGML_ASSERT, GGML_ABORT): `path/file.c:123: text`, before the backtrace. */
const NATIVE_ABORT = /^(?:.*[/\\])?([\w.+-]+\.(?:c|cc|cpp|h|hpp|m|cu):\d+: .*\S)\s*$/;
/** llama.cpp's load report, one line per metadata key, tensor type and model fact, when it reaches stderr unlogged. */
const METADATA_DUMP = /^(?:llama_model_loader: (?:- (?:kv|type) |loaded meta data |Dumping metadata )|print_info: )/;
/** llama-cpp-python's prints of the model's metadata and chat format (verbose mode). */
const LIBRARY_METADATA =
  /^(?:Model metadata: |Available chat formats from metadata: |Guessed chat format: |Using chat [be]os_token: )/;
/** The start of llama-cpp-python's chat template print; the template's own lines follow it. */
const TEMPLATE_START = 'Using gguf chat template: ';
/** An error line is reported only while it is among this many recent lines (of any kind): an old one is not this crash's. */
const ERROR_WINDOW_LINES = 200;
/** Longest error line in a message, and longest line in the details, in characters. */
export const MAX_ERROR_CHARS = 300;
const MAX_DETAIL_LINE_CHARS = 500;
/** Most characters of details, the newest kept. */
export const MAX_DETAILS_CHARS = 4000;

/** One stderr line taken apart: the log level and logger when the sidecar's logging wrote it. */
interface ParsedLine {
  readonly level: string | undefined;
  readonly logger: string | undefined;
  readonly text: string;
}

function parse(line: string): ParsedLine {
  const match = LOG_LINE.exec(line);
  if (match === null) return { level: undefined, logger: undefined, text: line };
  return { level: match[1], logger: match[2], text: match[3] ?? '' };
}

/** llama.cpp's text, when the line is one of its errors (a logged error, or a native abort). */
export function llamaErrorText(line: string): string | undefined {
  const { level, logger, text } = parse(line);
  if (logger === 'sidecar.llama' && (level === 'ERROR' || level === 'CRITICAL')) return text.trim() || undefined;
  if (level === undefined) return NATIVE_ABORT.exec(line)?.[1];
  return undefined;
}

/** The stderr tail of one sidecar process: the last lines worth reading, and its last llama.cpp error. */
export class StderrTail {
  private readonly kept: string[] = [];
  /** While inside llama-cpp-python's chat template print: the prefix its lines share. */
  private templatePrefix: string | undefined;
  private lastError: string | undefined;
  private linesSinceError = 0;

  constructor(private readonly maxLines: number) {}

  /** Take one line (without its newline). */
  push(line: string): void {
    const error = llamaErrorText(line);
    if (error !== undefined) {
      this.lastError = error;
      this.linesSinceError = 0;
    } else if (++this.linesSinceError > ERROR_WINDOW_LINES) {
      this.lastError = undefined; // every line counts here, the dump's too
    }
    if (this.isDump(line)) return;
    this.kept.push(line);
    if (this.kept.length > this.maxLines) this.kept.shift();
  }

  /** The kept lines, oldest first, and the last llama.cpp error line if a recent one was seen. */
  snapshot(): { stderrTail: string[]; lastLlamaError?: string } {
    const stderrTail = [...this.kept];
    return this.lastError === undefined ? { stderrTail } : { stderrTail, lastLlamaError: this.lastError };
  }

  /** Whether the line belongs to a model-metadata dump (llama.cpp's, or llama-cpp-python's). */
  private isDump(line: string): boolean {
    const { level, logger, text } = parse(line);
    const prefix = `${level ?? ''} ${logger ?? ''}`;
    if (this.templatePrefix !== undefined) {
      // The template's lines carry the same prefix as its first one; the print after it, or any
      // other line (another logger, a crash's plain output), ends it.
      if (prefix === this.templatePrefix && !LIBRARY_METADATA.test(text)) return true;
      this.templatePrefix = undefined;
    }
    if (text.startsWith(TEMPLATE_START)) {
      this.templatePrefix = prefix;
      return true;
    }
    // llama.cpp's own info and debug messages: its log callback logs them at DEBUG.
    if (logger === 'sidecar.llama' && level === 'DEBUG') return true;
    // An error or warning that starts like the dump is kept (`llama_model_loader: failed to …`).
    const report = level === undefined || level === 'DEBUG' || level === 'INFO';
    return (report && METADATA_DUMP.test(text)) || LIBRARY_METADATA.test(text);
  }
}

/** `text` cut to `max` characters (an ellipsis marks the cut). */
export function clip(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** The lines as one text for an error's `details`: each line and the whole capped, the newest kept. */
export function detailsText(lines: readonly string[]): string | undefined {
  const out: string[] = [];
  let size = 0;
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = clip(lines[i] ?? '', MAX_DETAIL_LINE_CHARS);
    if (size + line.length + 1 > MAX_DETAILS_CHARS) break;
    out.unshift(line);
    size += line.length + 1;
  }
  return out.length > 0 ? out.join('\n') : undefined;
}
