/**
 * The hub's engines as the admin dashboard shows them: parsing `GET /api/admin/engines` and
 * saying, for people, whether each engine is alive, how loaded it is and where its own dashboard
 * is. Every engine of a hub answers for all of them (they share one database), so an admin sees
 * every pool from whichever engine the page talks to.
 *
 * No DOM and no JupyterLab imports (`jlpm test` checks it with Node's test runner); the section
 * that draws it is `enginesection.ts`. Never guesses liveness itself: `alive` is the engine's
 * verdict by the database's clock, and the heartbeat's age is the engine's number, not the
 * browser's (whose clock may be off).
 */

import { formatDuration, Level } from './model';

/** What an engine reported with its last heartbeat (engine/engine.py `Engine.load`). */
export interface IEngineLoad {
  queueDepth: number;
  requestsActive: number;
  kvPagesUsed: number;
  kvPagesTotal: number;
}

export interface IHubEngine {
  name: string;
  /** "" for an engine that is not pooled (it admits everyone). */
  pool: string;
  accelerator: string;
  alive: boolean;
  /** Stopped cleanly (rather than gone silent). */
  stopped: boolean;
  heartbeatAgeSeconds: number | null;
  load: IEngineLoad | null;
}

export interface IHubEngines {
  engines: IHubEngine[];
  /** The name of the engine that answered (the one this dashboard talks to); null if it did not say. */
  thisEngine: string | null;
  staleSeconds: number;
}

function obj(v: unknown): { [k: string]: any } {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as any) : {};
}

function count(v: unknown): number {
  return typeof v === 'number' && isFinite(v) && v >= 0 ? v : 0;
}

function text(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

/** `GET potluck/api/admin/engines`; entries without a name are dropped (nothing to show or link). */
export function parseEngines(body: unknown): IHubEngines {
  const b = obj(body);
  const engines: IHubEngine[] = [];
  for (const item of Array.isArray(b.engines) ? b.engines : []) {
    const e = obj(item);
    const name = text(e.name);
    if (!name) {
      continue;
    }
    const load = e.load === null || e.load === undefined ? null : obj(e.load);
    const age = e.heartbeat_age_seconds;
    engines.push({
      name,
      pool: text(e.pool),
      accelerator: text(e.accelerator),
      alive: e.alive === true,
      stopped: typeof e.stopped_at === 'string' && e.stopped_at !== '',
      heartbeatAgeSeconds: typeof age === 'number' && isFinite(age) ? Math.max(0, age) : null,
      load: load && {
        queueDepth: count(load.queue_depth),
        requestsActive: count(load.requests_active),
        kvPagesUsed: count(load.kv_pages_used),
        kvPagesTotal: count(load.kv_pages_total)
      }
    });
  }
  const me = text(obj(b.this).name);
  return { engines, thisEngine: me || null, staleSeconds: count(b.stale_seconds) };
}

/** The pool as a person reads it: its name, or "not pooled" for an engine that admits everyone. */
export function poolLabel(pool: string): string {
  return pool || 'not pooled';
}

/** "alive", "stopped" (cleanly: its tenants moved at once) or "not responding" (no heartbeat lately). */
export function engineState(e: IHubEngine): { text: string; level: Level } {
  if (e.alive) {
    return { text: 'alive', level: 'ok' };
  }
  return e.stopped ? { text: 'stopped', level: 'warning' } : { text: 'not responding', level: 'critical' };
}

/** How long since the engine's last heartbeat: "2s ago"; "" when unknown. */
export function heartbeatText(e: IHubEngine): string {
  return e.heartbeatAgeSeconds === null ? '' : `${formatDuration(e.heartbeatAgeSeconds)} ago`;
}

/**
 * The load an engine last reported, as three cells: queue depth, active requests, KV pages
 * used of its pool ("812 / 4096 (20%)"). A stopped or silent engine's numbers are old: the
 * caller greys them (they are what it had when it was last heard from).
 */
export function loadCells(load: IEngineLoad | null): [string, string, string] {
  if (!load) {
    return ['–', '–', '–'];
  }
  const kv = load.kvPagesTotal > 0
    ? `${load.kvPagesUsed} / ${load.kvPagesTotal} (${Math.round((100 * load.kvPagesUsed) / load.kvPagesTotal)}%)`
    : `${load.kvPagesUsed}`;
  return [String(load.queueDepth), String(load.requestsActive), kv];
}

/**
 * Where an engine's own dashboard is: under a Hub every engine is a service, and services are
 * siblings under `/services/`, so it is `<servicesUrl><name>/`. Null without a Hub (no
 * `servicesUrl`): a standalone engine knows no address for the others.
 */
export function enginePageHref(servicesUrl: string | null | undefined, name: string): string | null {
  if (!servicesUrl) {
    return null;
  }
  return `${servicesUrl.replace(/\/?$/, '/')}${encodeURIComponent(name)}/`;
}

/** The `/services/` folder a service's page sits in: `/services/potluck/` -> `/services/`. */
export function servicesUrlOf(serviceBaseUrl: string): string {
  return serviceBaseUrl.replace(/[^/]+\/?$/, '');
}
