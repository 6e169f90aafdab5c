/**
 * Same-origin calls to the Potluck server extension (`<base>/potluck/api/...`), which forwards
 * them to the engine as this server's user. `ServerConnection.makeRequest` adds the server's
 * token and the XSRF header; the browser never holds an engine credential.
 */

import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { errorMessage, IRequester, oneLine, PotluckError } from './model';

export { PotluckError };

export class PotluckAPI implements IRequester {
  constructor(readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  url(path: string): string {
    return URLExt.join(this.settings.baseUrl, 'potluck/api', path);
  }

  /** `method path` with an optional JSON body; the parsed JSON answer (null for 204). */
  async request<T = any>(path: string, method = 'GET', body?: unknown): Promise<T> {
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(this.url(path), init, this.settings);
    } catch (e) {
      throw new PotluckError(oneLine(`cannot reach this Jupyter server: ${(e as Error).message}`), 0);
    }
    const text = await response.text();
    let data: any = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!response.ok) {
      let fallback = `${method} ${path}: HTTP ${response.status}`;
      if (response.status === 404 && data === null) {
        fallback = 'the Potluck server extension is not enabled on this Jupyter server';
      }
      throw new PotluckError(errorMessage(response.status, data, fallback), response.status);
    }
    return data as T;
  }

  /** The WebSocket of a run's events (`potluck/api/runs/ID/events`). */
  runEvents(runId: string): WebSocket {
    let url = URLExt.join(this.settings.wsUrl, 'potluck/api/runs', encodeURIComponent(runId), 'events');
    const token = this.settings.token;
    if (token) {
      url += `?token=${encodeURIComponent(token)}`;
    }
    return new this.settings.WebSocket(url);
  }
}
