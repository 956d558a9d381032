/**
 * The preload script (sandboxed, so CommonJS and no imports but Electron's):
 * exposes `window.llm` — six named functions over IPC — through the context
 * bridge. The page gets no Electron object, no `ipcRenderer`, no event objects:
 * listeners receive the event payload only. The channel names repeat those in
 * ipc.ts because a sandboxed preload cannot load local modules; a test checks
 * they agree.
 */

import electron = require('electron');
import type { LlmBridge, LlmEvent } from './bridge-api.js';

const CHANNELS = {
  loadDefaultModel: 'llm:load-default-model',
  send: 'llm:send',
  stop: 'llm:stop',
  newChat: 'llm:new-chat',
  history: 'llm:history',
  event: 'llm:event',
} as const;

const { contextBridge, ipcRenderer } = electron;

const llm: LlmBridge = {
  loadDefaultModel: () => ipcRenderer.invoke(CHANNELS.loadDefaultModel),
  send: (text) => ipcRenderer.invoke(CHANNELS.send, text),
  stop: (streamId) => ipcRenderer.invoke(CHANNELS.stop, streamId),
  newChat: () => ipcRenderer.invoke(CHANNELS.newChat),
  history: () => ipcRenderer.invoke(CHANNELS.history),
  onEvent: (listener) => {
    const forward = (_event: unknown, payload: LlmEvent): void => listener(payload);
    ipcRenderer.on(CHANNELS.event, forward);
    return () => {
      ipcRenderer.removeListener(CHANNELS.event, forward);
    };
  },
};

contextBridge.exposeInMainWorld('llm', llm);
