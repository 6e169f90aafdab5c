/**
 * The hub's engines as the admin dashboard shows them (`jlpm test`).
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  enginePageHref,
  engineState,
  heartbeatText,
  loadCells,
  parseEngines,
  poolLabel,
  servicesUrlOf
} from '../src/engines';

// As GET /api/admin/engines answers (engine/http/engines.py, store/engines.py list_engines).
const BODY = {
  engines: [
    {
      name: 'potluck-cpu-0', pool: 'cpu', accelerator: '', alive: true,
      started_at: '2026-11-30T15:00:00', heartbeat_at: '2026-11-30T15:10:00', heartbeat_age_seconds: 1.4,
      stopped_at: null, load: { queue_depth: 3, requests_active: 2, kv_pages_used: 812, kv_pages_total: 4096 }
    },
    {
      name: 'potluck-h100-0', pool: 'h100', accelerator: 'h100', alive: false,
      started_at: '2026-11-30T14:00:00', heartbeat_at: '2026-11-30T15:05:00', heartbeat_age_seconds: 301,
      stopped_at: '2026-11-30T15:05:00', load: { queue_depth: 0, requests_active: 0, kv_pages_used: 0, kv_pages_total: 0 }
    },
    {
      name: 'potluck-h100-1', pool: 'h100', accelerator: 'h100', alive: false,
      heartbeat_age_seconds: 42, stopped_at: null, load: null
    },
    { pool: 'cpu', alive: true }
  ],
  stale_seconds: 6,
  this: { name: 'potluck-cpu-0', pool: 'cpu', accelerator: '' }
};

describe('the hub engines list', () => {
  it('parses every named engine and which one answered', () => {
    const hub = parseEngines(BODY);
    assert.equal(hub.thisEngine, 'potluck-cpu-0');
    assert.equal(hub.staleSeconds, 6);
    assert.deepEqual(hub.engines.map(e => e.name), ['potluck-cpu-0', 'potluck-h100-0', 'potluck-h100-1']);
    assert.deepEqual(hub.engines[0], {
      name: 'potluck-cpu-0', pool: 'cpu', accelerator: '', alive: true, stopped: false, heartbeatAgeSeconds: 1.4,
      load: { queueDepth: 3, requestsActive: 2, kvPagesUsed: 812, kvPagesTotal: 4096 }
    });
    assert.equal(hub.engines[1].stopped, true);
    assert.equal(hub.engines[2].load, null);
  });

  it('reads a malformed answer as no engines, never as alive ones', () => {
    assert.deepEqual(parseEngines(null), { engines: [], thisEngine: null, staleSeconds: 0 });
    assert.deepEqual(parseEngines({ engines: 'x' }).engines, []);
    const [e] = parseEngines({ engines: [{ name: 'a', alive: 'yes', heartbeat_age_seconds: 'soon', load: 7 }] }).engines;
    assert.equal(e.alive, false);
    assert.equal(e.heartbeatAgeSeconds, null);
    assert.deepEqual(e.load, { queueDepth: 0, requestsActive: 0, kvPagesUsed: 0, kvPagesTotal: 0 });
  });

  it('says alive, stopped (cleanly) or not responding, with the heartbeat age', () => {
    const [alive, stopped, silent] = parseEngines(BODY).engines;
    assert.deepEqual(engineState(alive), { text: 'alive', level: 'ok' });
    assert.deepEqual(engineState(stopped), { text: 'stopped', level: 'warning' });
    assert.deepEqual(engineState(silent), { text: 'not responding', level: 'critical' });
    assert.equal(heartbeatText(alive), '1s ago');
    assert.equal(heartbeatText(stopped), '5m 1s ago');
    assert.equal(heartbeatText({ ...silent, heartbeatAgeSeconds: null }), '');
  });

  it('shows the load as queue, requests and KV pages used of the pool', () => {
    const [alive, stopped, silent] = parseEngines(BODY).engines;
    assert.deepEqual(loadCells(alive.load), ['3', '2', '812 / 4096 (20%)']);
    assert.deepEqual(loadCells(stopped.load), ['0', '0', '0']);
    assert.deepEqual(loadCells(silent.load), ['–', '–', '–']);
  });

  it('names an unpooled engine\'s pool for people', () => {
    assert.equal(poolLabel(''), 'not pooled');
    assert.equal(poolLabel('h100'), 'h100');
  });

  it('links each engine to its own page beside this one under a Hub, nowhere without one', () => {
    assert.equal(servicesUrlOf('/services/potluck/'), '/services/');
    assert.equal(servicesUrlOf('/prefix/services/potluck-cpu-0/'), '/prefix/services/');
    assert.equal(enginePageHref('/services/', 'potluck-h100-1'), '/services/potluck-h100-1/');
    assert.equal(enginePageHref('https://hub.example/services', 'a b'), 'https://hub.example/services/a%20b/');
    assert.equal(enginePageHref(null, 'potluck'), null);
    assert.equal(enginePageHref('', 'potluck'), null);
  });
});
