/**
 * The migration guide's TypeScript snippets compile against the client as an app gets it (the
 * package's name: its built types), under `tsc --init`'s strict settings: the "before" code (the old
 * API, unchanged) as much as the "after" code. Each ```ts block of docs/migration.md is checked as
 * a module of its own; its imports are replaced by the client's, and the names it uses without
 * defining them (the app's own: `win`, `modelFile`, …) are declared with the types the text implies.
 */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import ts from 'typescript';

import { PACKAGE_DIR, REPO_ROOT } from './helpers/sidecar.js';

const GUIDE = path.join(REPO_ROOT, 'docs', 'migration.md');

const IMPORTS = `
import path from 'node:path';
import { app } from 'electron';
import {
  type GenerationResult, type LlmChunk, LlmService, LLMServiceError, type SidecarCommand, WorkerTimeoutError,
} from 'llama-sidecar-client';
import { devSidecarCommand, packagedSidecarCommand } from '${path.join(PACKAGE_DIR, 'src', 'sidecar-command.js')}';
void [path, app, LlmService, LLMServiceError, WorkerTimeoutError, devSidecarCommand, packagedSidecarCommand];
`;

/** The app's own names the snippets use, declared when a snippet uses one without defining it. */
const APP_NAMES: Record<string, string> = {
  llm: 'declare const llm: LlmService;',
  modelFile: 'declare const modelFile: string;',
  win: 'declare const win: { webContents: { send(channel: string, ...args: unknown[]): void } };',
  stopButtonPressed: 'declare const stopButtonPressed: Promise<void>;',
  show: 'declare function show(what: unknown): void;',
  retryLater: 'declare function retryLater(): void;',
  retryWithMoreTokens: 'declare function retryWithMoreTokens(): void;',
  render: 'declare function render(text: string): void;',
  showProgress: 'declare function showProgress(bytes: number, total: number | undefined, perSecond: number): void;',
  sidecarCommand: 'declare function sidecarCommand(): SidecarCommand;',
  sidecarExecutable: 'declare const sidecarExecutable: string;',
  modelsDir: 'declare const modelsDir: string;',
  url: 'declare const url: string;',
  sha256: 'declare const sha256: string;',
  text: 'declare const text: string;',
  onChunk: 'declare const onChunk: (chunk: LlmChunk) => void;',
};

/** The ```ts blocks of the guide, with the line each starts on. */
function snippets(markdown: string): { line: number; code: string }[] {
  const found: { line: number; code: string }[] = [];
  for (const match of markdown.matchAll(/^```ts\n([\s\S]*?)^```$/gm)) {
    const line = markdown.slice(0, match.index).split('\n').length;
    found.push({ line, code: match[1] ?? '' });
  }
  return found;
}

/** A snippet as a module: the client's imports, declarations of the app's names it uses, then its code. */
function asModule(code: string): string {
  const body = code.replace(/^import .*$/gm, '');
  const declarations = Object.entries(APP_NAMES)
    .filter(([name]) => new RegExp(`\\b${name}\\b`).test(body))
    .filter(([name]) => !new RegExp(`\\b(const|let|function)\\s+${name}\\b`).test(body))
    .map(([, declaration]) => declaration);
  return `${IMPORTS}\n${declarations.join('\n')}\n${body}\nexport {};\n`;
}

/** Type-check the modules (name → text) together; the diagnostics, as "name:line: message". */
function typeCheck(modules: Map<string, string>): string[] {
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    strict: true,
    exactOptionalPropertyTypes: true,
    noUncheckedIndexedAccess: true,
    noEmit: true,
    skipLibCheck: true,
    types: ['node'],
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.fileExists = (file) => modules.has(file) || fileExists(file);
  host.readFile = (file) => modules.get(file) ?? readFile(file);
  host.getSourceFile = (file, language, ...rest) => {
    const text = modules.get(file);
    return text === undefined ? getSourceFile(file, language, ...rest) : ts.createSourceFile(file, text, language);
  };
  const program = ts.createProgram([...modules.keys()], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const where =
      d.file === undefined
        ? ''
        : `${path.basename(d.file.fileName)}:${d.file.getLineAndCharacterOfPosition(d.start ?? 0).line + 1}: `;
    return `${where}${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
  });
}

test("every TypeScript snippet of docs/migration.md compiles against the client, the old API's included", () => {
  const blocks = snippets(readFileSync(GUIDE, 'utf8'));
  assert.ok(blocks.length >= 6, `only ${blocks.length} snippets found`);
  assert.ok(
    blocks.some((block) => /handle\.cancel\(\)/.test(block.code)),
    'the guide shows the handle-style cancel',
  );
  // Named after the guide's line, so that an error points at the snippet.
  const modules = new Map(
    blocks.map((block) => [
      path.join(PACKAGE_DIR, 'test', `migration.md-line-${block.line}.mts`),
      asModule(block.code),
    ]),
  );
  assert.deepEqual(typeCheck(modules), []);
});
