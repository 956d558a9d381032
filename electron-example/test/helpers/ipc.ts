/** A stand-in for Electron's `ipcMain`: handlers are called directly, as `ipcRenderer.invoke` would reach them. */

import type { InvokeEvent, IpcMainLike } from '../../src/ipc.js';

export interface FakeIpcMain extends IpcMainLike {
  call(channel: string, event: InvokeEvent, ...args: unknown[]): Promise<unknown>;
}

export function fakeIpcMain(): FakeIpcMain {
  const handlers = new Map<string, (event: InvokeEvent, ...args: unknown[]) => unknown>();
  return {
    handle: (channel, listener) => {
      handlers.set(channel, listener);
    },
    removeHandler: (channel) => {
      handlers.delete(channel);
    },
    call: async (channel, event, ...args) => {
      const handler = handlers.get(channel);
      if (handler === undefined) throw new Error(`no handler for ${channel}`);
      return handler(event, ...args);
    },
  };
}
