/**
 * How the hosts start the sidecar. Unpackaged (the terminal chat, the Electron
 * app run from the checkout, the tests), it is this repository's venv python
 * with `-m sidecar`, in the repo root; `SIDECAR_PYTHON` names another python
 * (relative paths are taken from electron-example/). Packaged, it is the frozen
 * executable `make package` builds (the repo's dist/llama-sidecar/), which
 * electron-builder.json copies into the app's resources as `llama-sidecar/`.
 */

import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type { SidecarCommand } from 'llama-sidecar-client';

/** electron-example/, whether this file runs from src/ (tsx) or dist/ (built). */
export const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = path.resolve(PACKAGE_DIR, '..');
/** The folder of the frozen sidecar inside a packaged app's resources (electron-builder.json's `extraResources` `to`). */
export const SIDECAR_RESOURCE_DIR = 'llama-sidecar';

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

/** The frozen sidecar's executable in a folder that `make package` built (dist/llama-sidecar, or its copy in resources). */
export function sidecarExecutable(folder: string, platform: NodeJS.Platform = process.platform): string {
  return path.join(folder, platform === 'win32' ? 'llama-sidecar.exe' : 'llama-sidecar');
}

/**
 * A packaged app's sidecar: the executable under `resourcesPath` (Electron's `process.resourcesPath`),
 * run in its own folder. Throws, naming the path, when it is missing or not executable, so that a
 * package built without `make package` says so at start.
 */
export function packagedSidecarCommand(
  resourcesPath: string,
  platform: NodeJS.Platform = process.platform,
): SidecarCommand {
  const folder = path.join(resourcesPath, SIDECAR_RESOURCE_DIR);
  const command = sidecarExecutable(folder, platform);
  try {
    accessSync(command, platform === 'win32' ? constants.F_OK : constants.X_OK);
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'is missing' : 'is not executable';
    throw new Error(
      `The packaged sidecar ${command} ${reason}: build it with \`make package\` before packaging the app.`,
      {
        cause: error,
      },
    );
  }
  return { command, cwd: folder };
}
