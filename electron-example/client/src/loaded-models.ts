/**
 * The models a restarted sidecar must load again, and how it does.
 *
 * `LlmService` records each model it loads (with the params it was loaded
 * with) and forgets the ones it unloads; the sidecar's model limit may unload
 * one to make room, which `forgetUnloaded` notices. After a restart,
 * `reloadInto` loads them all again, in load order, so the last stays the
 * default. A model whose reload fails is forgotten rather than failing every
 * restart on it. It knows models and a client, not when a sidecar starts.
 */

import { disposedError, LLMServiceError } from './errors.js';
import type { Logger } from './log.js';
import type { LoadModelParams } from './protocol-types.js';
import type { SidecarClient } from './sidecar-client.js';

export class LoadedModels {
  /** Params by model id, in load order (the last is the default). */
  private readonly params = new Map<string, LoadModelParams>();

  constructor(private readonly logger: Logger) {}

  /** A model was loaded: reload it after a restart, as the newest one. */
  add(modelId: string, params: LoadModelParams): void {
    this.params.delete(modelId);
    this.params.set(modelId, { ...params, modelId });
  }

  /** Do not reload `modelId` (the default model when undefined); false when it was not there. */
  forget(modelId: string | undefined): boolean {
    const forgotten = modelId ?? [...this.params.keys()].pop();
    return forgotten !== undefined && this.params.delete(forgotten);
  }

  get size(): number {
    return this.params.size;
  }

  /** Forget the models the sidecar no longer has (its model limit unloads the least recently used one). */
  async forgetUnloaded(client: SidecarClient): Promise<void> {
    let present: Set<string>;
    try {
      present = new Set((await client.listModels()).models.map((model) => model.modelId));
    } catch (error) {
      this.logger('debug', `could not list the models after a load: ${(error as Error).message}`);
      return;
    }
    for (const modelId of [...this.params.keys()]) {
      if (present.has(modelId)) continue;
      this.params.delete(modelId);
      this.logger('info', `model ${modelId} was unloaded by the sidecar's model limit`);
    }
  }

  /**
   * Load every model into a new sidecar. When `signal` fires (the service was disposed), close it
   * and throw CLOSED before the next load; a load under way is cancelled.
   */
  async reloadInto(client: SidecarClient, signal: AbortSignal): Promise<void> {
    for (const [modelId, params] of this.params) {
      try {
        // Once `signal` has fired, the next load is not even sent (it rejects at once).
        await client.loadModel(params, { signal });
        this.logger('info', `reloaded model ${modelId} after a restart`);
      } catch (error) {
        await this.reloadFailed(client, modelId, error, signal);
      }
    }
  }

  /**
   * A reload failed. After a dispose, close the sidecar and stop. Otherwise forget the model rather
   * than fail every restart on it: its file may be gone (an error response: the sidecar goes on), or
   * loading it crashes or hangs the sidecar, which is then stopped, and the call fails; the next
   * call starts a sidecar without it.
   */
  private async reloadFailed(
    client: SidecarClient,
    modelId: string,
    error: unknown,
    signal: AbortSignal,
  ): Promise<void> {
    if (signal.aborted) {
      await client.close();
      throw disposedError();
    }
    this.params.delete(modelId);
    this.logger('error', `could not reload model ${modelId} after a restart; forgot it: ${(error as Error).message}`);
    if (error instanceof LLMServiceError && error.fromSidecar) return;
    // The supervisor never gets this client, so nothing else would ever stop its process.
    await client.close({ force: true });
    throw error;
  }
}
