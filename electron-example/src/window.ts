/**
 * The app window, locked down: context isolation, the renderer sandbox, no
 * Node integration anywhere, no new windows, no navigation away from the
 * app's page, no permissions. It takes the BrowserWindow class as an argument
 * (and imports only Electron's types), so a test can check exactly what the
 * main process passes to Electron. It knows nothing of IPC or the model.
 */

import { fileURLToPath } from 'node:url';

import type { BrowserWindowConstructorOptions } from 'electron';

/** Every setting here is also Electron's default today; stating them keeps a future default change from loosening them. */
export function secureWindowOptions(preloadPath: string): BrowserWindowConstructorOptions {
  return {
    width: 860,
    height: 720,
    title: 'Local LLM chat',
    webPreferences: {
      preload: preloadPath,
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      webviewTag: false,
      spellcheck: false,
    },
  };
}

/** The parts of a BrowserWindow this module touches. */
export interface WindowLike {
  loadFile(filePath: string): Promise<void>;
  readonly webContents: {
    setWindowOpenHandler(handler: (details: { url: string }) => { action: 'deny' }): void;
    on(event: 'will-navigate', listener: (event: { preventDefault(): void }, url: string) => void): void;
  };
}

export interface MainWindowDeps<W extends WindowLike> {
  readonly BrowserWindow: new (options: BrowserWindowConstructorOptions) => W;
  readonly preloadPath: string;
  /** The app's page: the only place the window may be. */
  readonly indexPath: string;
}

/** Whether `url` is the app's page (compared as a file path, so URL encoding and #hash do not matter). */
export function isAppPage(url: string | undefined, indexPath: string): boolean {
  if (url?.startsWith('file:') !== true) return false;
  try {
    return fileURLToPath(url) === indexPath;
  } catch {
    return false; // a file URL with a host, or an invalid one
  }
}

export async function createMainWindow<W extends WindowLike>(deps: MainWindowDeps<W>): Promise<W> {
  const window = new deps.BrowserWindow(secureWindowOptions(deps.preloadPath));
  window.webContents.setWindowOpenHandler(() => ({ action: 'deny' }));
  window.webContents.on('will-navigate', (event, url) => {
    if (!isAppPage(url, deps.indexPath)) event.preventDefault();
  });
  await window.loadFile(deps.indexPath);
  return window;
}
