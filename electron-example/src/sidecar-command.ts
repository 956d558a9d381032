/**
 * How the development hosts (terminal chat, the Electron app unpackaged, the
 * tests) start the sidecar from this repository: the venv's python with
 * `-m sidecar`, in the repo root. `SIDECAR_PYTHON` names another python
 * (relative paths are taken from electron-example/). A packaged app passes its
 * own command instead (see docs/migration.md).
 */

import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type { SidecarCommand } from 'llama-sidecar-client';

/** electron-example/, whether this file runs from src/ (tsx) or dist/ (built). */
export const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = path.resolve(PACKAGE_DIR, '..');

export function devPython(env: NodeJS.ProcessEnv = process.env): string {
  const venvPython = process.platform === 'win32' ? '../.venv/Scripts/python.exe' : '../.venv/bin/python';
  return path.resolve(PACKAGE_DIR, env['SIDECAR_PYTHON'] ?? venvPython);
}

export function devSidecarCommand(
  extraArgs: readonly string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): SidecarCommand {
  return { command: devPython(env), args: ['-m', 'sidecar', ...extraArgs], cwd: REPO_ROOT };
}
