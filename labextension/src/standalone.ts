/**
 * The admin dashboard as the engine serves it at its own base URL (`/services/potluck/` under
 * a Hub), for hub admins in a plain browser: bundled into one script by `build-dashboard.mjs`.
 *
 * The page's config (`<script id="potluck-dashboard-config">`, written by the engine's
 * `http/dashboard.py`) carries the API's base URL and, under a Hub, the admin's own OAuth token
 * for this service and the Hub's API URL: group quotas are edited there with that token, so
 * with the admin's own rights (only if the token carries the `groups` scope). A standalone
 * engine has no login: the page asks for an engine token (or takes `#token=...`) and keeps it in
 * this tab's session storage only.
 */

import { Dashboard, IHubGroups } from './dashboard';
import { el } from './dom';
import { propertiesWithQuota } from './groupquota';
import { servicesUrlOf } from './engines';
import { errorMessage, IRequester, oneLine, PotluckError, QuotaValue } from './model';

const REFRESH_MS = 5000;
const TOKEN_KEY = 'potluck-dashboard-token';

interface IPageConfig {
  base_url: string;
  token: string | null;
  hub_admin_url: string | null;
  hub_api_url: string | null;
}

/** Requests to an API under `baseUrl` with `Authorization: token ...`, errors as `PotluckError`. */
export class EngineRequester implements IRequester {
  constructor(
    readonly baseUrl: string,
    readonly token: string,
    readonly what = 'the Potluck engine'
  ) {}

  async request<T = any>(path: string, method = 'GET', body?: unknown): Promise<T> {
    const headers: { [k: string]: string } = { Authorization: `token ${this.token}` };
    // No cookies: the token alone says who is asking (the Hub's API then needs no XSRF token).
    const init: RequestInit = { method, headers, cache: 'no-store', credentials: 'omit' };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      headers['Content-Type'] = 'application/json';
    }
    let response: Response;
    try {
      response = await fetch(`${this.baseUrl}${path}`, init);
    } catch (e) {
      throw new PotluckError(oneLine(`cannot reach ${this.what}: ${(e as Error).message}`), 0);
    }
    const text = await response.text();
    let data: any = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      throw new PotluckError(errorMessage(response.status, data, `${method} ${path}: HTTP ${response.status}`), response.status);
    }
    return data as T;
  }
}

/** Group quotas in the Hub, through its REST API with the admin's own (OAuth) token. */
class HubGroups implements IHubGroups {
  constructor(readonly hub: EngineRequester) {}

  async scopes(): Promise<string[]> {
    const me = await this.hub.request('user');
    return Array.isArray(me?.scopes) ? me.scopes.map(String) : [];
  }

  async setQuota(group: string, fields: { [field: string]: QuotaValue }): Promise<void> {
    const path = `groups/${encodeURIComponent(group)}`;
    const model = await this.hub.request(path);
    const properties = model && typeof model.properties === 'object' && model.properties ? model.properties : {};
    await this.hub.request(`${path}/properties`, 'PUT', propertiesWithQuota(properties, fields));
  }
}

function pageConfig(): IPageConfig {
  const node = document.getElementById('potluck-dashboard-config');
  let cfg: any = {};
  try {
    cfg = JSON.parse(node?.textContent || '{}');
  } catch {
    cfg = {};
  }
  return {
    base_url: typeof cfg.base_url === 'string' ? cfg.base_url : './',
    token: typeof cfg.token === 'string' && cfg.token ? cfg.token : null,
    hub_admin_url: typeof cfg.hub_admin_url === 'string' ? cfg.hub_admin_url : null,
    hub_api_url: typeof cfg.hub_api_url === 'string' ? cfg.hub_api_url : null
  };
}

/** A token handed in the URL's fragment (never sent to a server), removed from the address bar. */
function tokenFromFragment(): string | null {
  const m = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (!m) {
    return null;
  }
  history.replaceState(null, '', window.location.pathname + window.location.search);
  return decodeURIComponent(m[1]);
}

function start(root: HTMLElement, cfg: IPageConfig, token: string): void {
  const hubGroups = cfg.hub_api_url
    ? new HubGroups(new EngineRequester(cfg.hub_api_url.replace(/\/?$/, '/'), token, 'the JupyterHub'))
    : null;
  const dashboard = new Dashboard({
    requester: new EngineRequester(`${cfg.base_url}api/`, token),
    hubAdminUrl: cfg.hub_admin_url,
    hubGroups,
    // Under a Hub this page is a service (`/services/NAME/`): the hub's other engines are its siblings.
    servicesUrl: cfg.hub_api_url ? servicesUrlOf(cfg.base_url) : null
  });
  root.textContent = '';
  root.appendChild(dashboard.node);
  let timer = 0;
  const tick = async () => {
    window.clearTimeout(timer);
    if (document.visibilityState !== 'hidden') {
      await dashboard.refresh();
    }
    timer = window.setTimeout(() => void tick(), REFRESH_MS);
  };
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') {
      void tick();
    }
  });
  void tick();
}

/** A standalone engine: ask for an engine admin's token (`potluck token create NAME --admin`). */
function askToken(root: HTMLElement, cfg: IPageConfig): void {
  const form = el('form', 'jp-PotluckDash-login');
  form.appendChild(el('h2', 'jp-Potluck-title', 'Potluck admin dashboard'));
  form.appendChild(el('p', 'jp-Potluck-hint',
    'This engine runs without a Hub: paste an admin token (potluck token create NAME --admin). ' +
    'It is kept in this browser tab only.'));
  const input = el('input', 'jp-mod-styled jp-PotluckDash-token');
  input.type = 'password';
  input.name = 'token';
  input.autocomplete = 'off';
  const go = el('button', 'jp-Button jp-mod-styled jp-mod-accept', 'Open');
  go.type = 'submit';
  form.append(input, go);
  form.addEventListener('submit', (e: Event) => {
    e.preventDefault();
    const token = input.value.trim();
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token);
      start(root, cfg, token);
    }
  });
  root.textContent = '';
  root.appendChild(form);
  input.focus();
}

function main(): void {
  const root = document.getElementById('potluck-dashboard') || document.body;
  const cfg = pageConfig();
  const fragment = tokenFromFragment();
  if (fragment) {
    sessionStorage.setItem(TOKEN_KEY, fragment);
  }
  const token = cfg.token || fragment || sessionStorage.getItem(TOKEN_KEY);
  if (token) {
    start(root, cfg, token);
  } else {
    askToken(root, cfg);
  }
}

main();
