/**
 * The logger callback every layer reports through, and its default.
 *
 * Hosts pass their own (Electron's main-process log, a terminal, a test
 * collector). The default prints warnings and errors only, so a library that
 * nobody configured still says when something goes wrong.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export type Logger = (level: LogLevel, message: string) => void;

export const defaultLogger: Logger = (level, message) => {
  if (level === 'warn' || level === 'error') console.warn(`[llama-sidecar] ${level}: ${message}`);
};
