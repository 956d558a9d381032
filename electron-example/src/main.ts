/**
 * The Electron main process: owns the `LlmService` (and so the sidecar),
 * opens the locked-down window, and wires `window.llm`'s IPC to the service:
 * loading the model (with its progress) opens the window's chat session, which
 * keeps the conversation, so each message the page sends is one more turn.
 *
 * Unpackaged, the sidecar is this repository's venv python (`-m sidecar`);
 * packaged, it is the frozen executable electron-builder.json puts in the app's
 * resources (`resources/llama-sidecar/llama-sidecar`, from `make package`). On
 * quit the sidecar is shut down gracefully before the app exits. Everything
 * testable without Electron lives in window.ts, ipc.ts and sidecar-command.ts.
 */

import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { app, BrowserWindow, dialog, ipcMain, session } from 'electron';
import { LlmService, type Logger, type SidecarCommand } from 'llama-sidecar-client';

import { CHANNELS, registerLlmIpc } from './ipc.js';
import { devSidecarCommand, packagedSidecarCommand } from './sidecar-command.js';
import { createMainWindow, isAppPage } from './window.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const INDEX_PATH = path.join(HERE, 'renderer', 'index.html');

const logger: Logger = (level, message) => {
  if (level !== 'debug') console.log(`[${level}] ${message}`);
};

/** A packaged app starts the frozen sidecar from its resources; throws when the package lacks it. */
function sidecarCommand(): SidecarCommand {
  return app.isPackaged ? packagedSidecarCommand(process.resourcesPath) : devSidecarCommand();
}

/** Created once the app is ready (a package without its sidecar then fails with a dialog, not silently). */
let service: LlmService | undefined;

async function openWindow(llm: LlmService): Promise<void> {
  const window = await createMainWindow({
    BrowserWindow,
    preloadPath: path.join(HERE, 'preload.cjs'),
    indexPath: INDEX_PATH,
  });
  const unregister = registerLlmIpc(ipcMain, {
    service: llm,
    model: 'default',
    systemPrompt: 'You are a helpful assistant. Answer briefly.',
    sampling: { maxTokens: 512, temperature: 0.7 },
    emit: (event) => {
      if (!window.isDestroyed()) window.webContents.send(CHANNELS.event, event);
    },
    isTrustedSender: (event) => isAppPage(event.senderFrame?.url, INDEX_PATH),
  });
  window.on('closed', unregister);
}

app
  .whenReady()
  .then(async () => {
    // The page needs no camera, microphone, notifications or anything else.
    session.defaultSession.setPermissionRequestHandler((_contents, _permission, callback) => callback(false));
    service = new LlmService({
      sidecar: sidecarCommand(),
      logger,
      clientInfo: { name: 'electron-example', version: app.getVersion() },
    });
    await openWindow(service);
  })
  .catch((error: unknown) => {
    const message = error instanceof Error ? error.message : String(error);
    logger('error', `could not start: ${message}`);
    dialog.showErrorBox('Local LLM chat could not start', message);
    app.exit(1);
  });

app.on('window-all-closed', () => app.quit());

let disposed = false;
app.on('will-quit', (event) => {
  if (disposed || service === undefined) return;
  // Hold the quit until the sidecar has shut down, so it never outlives the app.
  event.preventDefault();
  disposed = true;
  void service.dispose().finally(() => app.quit());
});
