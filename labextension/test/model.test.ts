/**
 * The frontend's model, with Node's own test runner (`jlpm test`): formatting, levels,
 * quota sources, parsing the engine's answers, the admin's quota form.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  activeRunsByOwner,
  approx,
  DEFAULT_RUN_STATES,
  errorMessage,
  errorSummary,
  eventText,
  formatAge,
  formatBytes,
  formatCompact,
  formatCount,
  formatDuration,
  formatLatencyPair,
  formatMs,
  formatQuotaValue,
  latencyRows,
  parseContexts,
  parseLatency,
  parseMe,
  parseQuotaInput,
  parseRuns,
  parseStatus,
  parseTenants,
  quotaInputText,
  quotaOverrideFromForm,
  quotaSourceLabel,
  runEnded,
  statusSummary,
  usageLevel,
  worstLevel
} from '../src/model';

// What the engine answers (engine/engine.py status(), _report(), me(); served by engine/http/me.py).
const STATUS = {
  version: '0.1.0',
  model: 'SmolLM2-135M-Instruct',
  device: { kind: 'cpu', name: 'cpu', capability: null, total_bytes: 17179869184, free_bytes: 1, cpu_count: 2 },
  profile: { name: 'cpu', device: 'cpu', dtype: 'float32', page_size: 16 },
  scheduler: 'vtc',
  kv: { page_size: 16, total_pages: 4096, free_pages: 4000, used_pages: 96 },
  active_tenants: 2,
  queue_depth: 3,
  running_generations: 1,
  uptime_seconds: 12.5
};

const ME = {
  name: 'bob',
  groups: ['students'],
  is_admin: false,
  quota: {
    weight: 1.0,
    priority: 'interactive',
    kv_pages: 64,
    kv_pages_soft: null,
    max_runs: 4,
    max_concurrent_requests: 32,
    tokens_per_minute: 2000,
    tokens_per_day: null,
    max_tokens_per_request: 4096,
    fuel_per_run: 20000000000,
    max_run_seconds: 600.0,
    memory_mb_per_run: 256,
    models: ['*']
  },
  quota_source: { weight: 'default', kv_pages: 'user', tokens_per_minute: 'group:students', tokens_per_day: 'default' },
  usage: {
    prefill_tokens: 100,
    decode_tokens: 20,
    page_seconds: 1.5,
    fuel: 0,
    tokens_last_minute: 120,
    tokens_today: 900,
    active_requests: 0,
    active_runs: 1
  },
  kv_pages: 3,
  saved_contexts: 1,
  open_contexts: 0,
  usage_total: { prefill_tokens: 100, decode_tokens: 20 },
  override: { kv_pages: 64 },
  latency: { ttft_p50_ms: 310.4, ttft_p99_ms: 1250.0, tbt_p50_ms: 42.0, tbt_p99_ms: 96.0, generations: 12 }
};

describe('formatting', () => {
  it('counts: plain digits below a million, then M/G; null is no limit', () => {
    assert.equal(formatCount(0), '0');
    assert.equal(formatCount(120), '120');
    assert.equal(formatCount(999999), '999999');
    assert.equal(formatCount(1500000), '1.5M');
    assert.equal(formatCount(2000000), '2M');
    assert.equal(formatCount(20000000000), '20G');
    assert.equal(formatCount(null), '∞');
    assert.equal(formatCount(undefined), '∞');
  });

  it('compact numbers', () => {
    assert.equal(formatCompact(950), '950');
    assert.equal(formatCompact(12345), '12.3k');
    assert.equal(formatCompact(1000), '1k');
    assert.equal(formatCompact(123456), '123k');
    assert.equal(formatCompact(4500000), '4.5M');
    assert.equal(formatCompact(20000000000), '20G');
    assert.equal(formatCompact(null), '∞');
  });

  it('bytes in binary units', () => {
    assert.equal(formatBytes(512), '512 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatBytes(1024 * 1024), '1 MiB');
    assert.equal(formatBytes(17179869184), '16 GiB');
    assert.equal(formatBytes(150 * 1024 ** 3), '150 GiB');
    assert.equal(formatBytes(undefined), '?');
  });

  it('durations and ages to two units', () => {
    assert.equal(formatDuration(0), '0s');
    assert.equal(formatDuration(42.9), '42s');
    assert.equal(formatDuration(60), '1m');
    assert.equal(formatDuration(192), '3m 12s');
    assert.equal(formatDuration(2 * 3600 + 5 * 60 + 7), '2h 5m');
    assert.equal(formatDuration(3 * 86400 + 4 * 3600 + 59), '3d 4h');
    assert.equal(formatDuration(-5), '0s');
    const now = Date.parse('2025-01-01T12:00:00Z');
    assert.equal(formatAge('2025-01-01T11:58:30+00:00', now), '1m 30s');
    assert.equal(formatAge(null, now), '');
    assert.equal(formatAge('not a time', now), '');
  });

  it('quota values', () => {
    assert.equal(formatQuotaValue('tokens_per_day', null), '∞');
    assert.equal(formatQuotaValue('kv_pages', 64), '64');
    assert.equal(formatQuotaValue('fuel_per_run', 20000000000), '20G');
    assert.equal(formatQuotaValue('max_run_seconds', 600), '600 s');
    assert.equal(formatQuotaValue('memory_mb_per_run', 256), '256 MB');
    assert.equal(formatQuotaValue('models', ['a', 'b']), 'a, b');
    assert.equal(formatQuotaValue('priority', 'batch'), 'batch');
  });
});

describe('latency', () => {
  it('milliseconds, then seconds; no sample is a dash', () => {
    assert.equal(formatMs(0.84), '0.8 ms');
    assert.equal(formatMs(42.4), '42 ms');
    assert.equal(formatMs(999), '999 ms');
    assert.equal(formatMs(1250), '1.3 s');
    assert.equal(formatMs(3000), '3 s');
    assert.equal(formatMs(null), '–');
    assert.equal(formatLatencyPair(42, 1250), '42 ms / 1.3 s');
    assert.equal(formatLatencyPair(42, null), '42 ms / –');
    assert.equal(formatLatencyPair(null, null), '');
  });

  it("parses the engine's latency defensively", () => {
    assert.deepEqual(parseLatency(ME.latency), {
      ttftP50Ms: 310.4, ttftP99Ms: 1250, tbtP50Ms: 42, tbtP99Ms: 96, generations: 12
    });
    // An older engine sends none; a broken value never throws.
    assert.equal(parseLatency(undefined), null);
    assert.equal(parseLatency(null), null);
    assert.equal(parseLatency('fast'), null);
    assert.equal(parseLatency([1, 2]), null);
    assert.deepEqual(parseLatency({ ttft_p50_ms: 'x', tbt_p99_ms: -1, generations: '3' }), {
      ttftP50Ms: null, ttftP99Ms: null, tbtP50Ms: null, tbtP99Ms: null, generations: 0
    });
  });

  it('the panel shows rows only once there are generations', () => {
    assert.deepEqual(latencyRows(parseLatency(ME.latency)), [
      ['first token', '310 ms / 1.3 s'],
      ['between tokens', '42 ms / 96 ms']
    ]);
    assert.deepEqual(latencyRows(null), []);
    // A tenant that has generated nothing yet: the engine sends nulls and 0.
    const none = parseLatency({ ttft_p50_ms: null, ttft_p99_ms: null, tbt_p50_ms: null, tbt_p99_ms: null, generations: 0 });
    assert.deepEqual(latencyRows(none), []);
    // One-token generations have a first token but no gaps between tokens.
    const one = parseLatency({ ttft_p50_ms: 20, ttft_p99_ms: 20, tbt_p50_ms: null, tbt_p99_ms: null, generations: 1 });
    assert.deepEqual(latencyRows(one), [['first token', '20 ms / 20 ms']]);
  });
});

describe('levels', () => {
  it('thresholds: ok below 80%, warning from 80%, critical from 95%', () => {
    assert.equal(usageLevel(0, 100), 'ok');
    assert.equal(usageLevel(79, 100), 'ok');
    assert.equal(usageLevel(80, 100), 'warning');
    assert.equal(usageLevel(94, 100), 'warning');
    assert.equal(usageLevel(95, 100), 'critical');
    assert.equal(usageLevel(150, 100), 'critical');
  });

  it('no limit is always ok; a zero limit is critical once used', () => {
    assert.equal(usageLevel(1e9, null), 'ok');
    assert.equal(usageLevel(5, undefined), 'ok');
    assert.equal(usageLevel(0, 0), 'ok');
    assert.equal(usageLevel(1, 0), 'critical');
  });

  it('the worst level wins', () => {
    assert.equal(worstLevel([]), 'ok');
    assert.equal(worstLevel(['ok', 'warning', 'ok']), 'warning');
    assert.equal(worstLevel(['warning', 'critical']), 'critical');
    assert.equal(worstLevel(['critical', 'error', 'ok']), 'error');
  });
});

describe('quota sources', () => {
  it('labels where each value came from', () => {
    assert.equal(quotaSourceLabel('default'), 'default');
    assert.equal(quotaSourceLabel(undefined), 'default');
    assert.equal(quotaSourceLabel('group:students'), 'group:students');
    assert.equal(quotaSourceLabel('user'), 'user override');
  });
});

describe('parsing', () => {
  it('/api/status', () => {
    const s = parseStatus(STATUS);
    assert.equal(s.model, 'SmolLM2-135M-Instruct');
    assert.equal(s.deviceKind, 'cpu');
    assert.equal(s.deviceMemoryBytes, 17179869184);
    assert.equal(s.profile, 'cpu');
    assert.equal(s.dtype, 'float32');
    assert.equal(s.queueDepth, 3);
    assert.equal(s.totalPages, 4096);
    assert.equal(s.freePages, 4000);
    assert.equal(s.pageSize, 16);
    assert.equal(s.activeTenants, 2);
  });

  it('/api/status for a non-admin: coarse counts shown as ranges, never as exact zeros', () => {
    const s = parseStatus({ ...STATUS, queue_depth: 0, active_tenants: 4, coarse: true,
                            granularity: { kv_pages: 512, requests: 8, tenants: 4 } });
    assert.equal(s.requestStep, 8);
    assert.equal(approx(s.queueDepth, s.requestStep), '<8');
    assert.equal(approx(s.activeTenants, s.tenantStep), '4+');
    assert.equal(approx(3, parseStatus(STATUS).requestStep), '3');
    assert.match(statusSummary(parseMe(ME), s).text, /queue <8/);
  });

  it('an engine that could not start: its one-line reason', () => {
    assert.equal(errorMessage(503, { model_error: 'cannot load model x', ready: false }), 'cannot load model x');
  });

  it('/api/status with missing parts does not throw', () => {
    const s = parseStatus({});
    assert.equal(s.model, '?');
    assert.equal(s.queueDepth, 0);
    assert.equal(parseStatus(null).profile, '?');
  });

  it('/api/me', () => {
    const me = parseMe(ME);
    assert.equal(me.name, 'bob');
    assert.deepEqual(me.groups, ['students']);
    assert.equal(me.isAdmin, false);
    assert.equal(me.quota.tokens_per_minute, 2000);
    assert.equal(me.quota.tokens_per_day, null);
    assert.equal(me.quotaSource.tokens_per_minute, 'group:students');
    assert.equal(me.usage.tokensLastMinute, 120);
    assert.equal(me.usage.tokensToday, 900);
    assert.equal(me.usage.activeRuns, 1);
    assert.equal(me.kvPages, 3);
    assert.deepEqual(me.override, { kv_pages: 64 });
    assert.equal(me.latency!.ttftP99Ms, 1250);
    assert.equal(me.latency!.generations, 12);
    const older: { [k: string]: unknown } = { ...ME };
    delete older.latency;
    assert.equal(parseMe(older).latency, null);
    assert.equal(parseMe({ ...ME, is_admin: true }).isAdmin, true);
    assert.equal(parseMe({ ...ME, is_admin: 'yes' }).isAdmin, false);
  });

  it('runs, contexts, tenants', () => {
    const runs = parseRuns({
      runs: [
        {
          id: 'r1', owner: 'bob', state: 'running', error: null, created: '2025-01-01T00:00:00+00:00',
          started: null, finished: null, kind: 'python',
          usage: { prefill_tokens: 10, decode_tokens: 5, forwards: 3, fuel: 12345, output_bytes: 4 }
        },
        { id: 'r2', owner: 'ann', state: 'failed', error: 'out of fuel', usage: {} },
        { state: 'running' }
      ]
    });
    assert.equal(runs.length, 2);
    assert.equal(runs[0].tokens, 15);
    assert.equal(runs[0].fuel, 12345);
    assert.equal(runs[1].error, 'out of fuel');
    assert.deepEqual(parseRuns({}), []);
    assert.deepEqual(activeRunsByOwner(runs), { bob: 1 });

    assert.deepEqual(parseContexts({ contexts: [{ name: 'story', n_tokens: 12 }] }), [{ name: 'story', nTokens: 12 }]);

    const tenants = parseTenants({
      tenants: [
        { ...ME, live: true, usage_total: { prefill_tokens: 1000, decode_tokens: 234 } },
        { name: 'gone', groups: null, quota: null, quota_source: null, usage: null, kv_pages: 0, live: false,
          override: { weight: 2 }, usage_total: null }
      ]
    });
    assert.equal(tenants.length, 2);
    assert.equal(tenants[0].totalTokens, 1234);
    assert.equal(tenants[0].usage!.tokensLastMinute, 120);
    assert.equal(tenants[1].live, false);
    assert.equal(tenants[1].quota, null);
    assert.equal(tenants[1].usage, null);
    assert.deepEqual(tenants[1].override, { weight: 2 });
    assert.equal(tenants[1].totalTokens, null);
    assert.equal(tenants[0].latency!.tbtP50Ms, 42);
    // A tenant known only from the database has no latency: nothing to show, no error.
    assert.equal(tenants[1].latency, null);
  });

  it('errors as one line', () => {
    assert.equal(
      errorMessage(429, { error: { code: 'quota_exceeded', message: 'token rate limit:\n  2000 per minute' } }),
      'token rate limit: 2000 per minute'
    );
    assert.equal(errorMessage(502, null, 'no engine'), 'no engine');
    assert.equal(errorMessage(500, 'x'), 'HTTP 500');
  });
});

describe('the status item', () => {
  it('says my tokens and pages against my quota and the queue', () => {
    const s = statusSummary(parseMe(ME), parseStatus(STATUS));
    assert.equal(s.text, 'Potluck 120/2000 tok/min · 3/64 pages · queue 3');
    assert.equal(s.level, 'ok');
    assert.match(s.title, /tokens this minute: 120 of 2000 \(group:students\)/);
    assert.match(s.title, /KV pages held: 3 of 64 \(user override\)/);
  });

  it('shows ∞ without a limit, and the day when there is one', () => {
    const me = parseMe({ ...ME, quota: { ...ME.quota, tokens_per_minute: null, tokens_per_day: 1000 } });
    const s = statusSummary(me, parseStatus(STATUS));
    assert.equal(s.text, 'Potluck 120/∞ tok/min · 900/1000 tok/day · 3/64 pages · queue 3');
    assert.equal(s.level, 'warning');      // 900 of 1000 today
  });

  it('turns critical near a limit', () => {
    const me = parseMe({ ...ME, kv_pages: 63 });
    assert.equal(statusSummary(me, parseStatus(STATUS)).level, 'critical');
    const me2 = parseMe({ ...ME, usage: { ...ME.usage, tokens_last_minute: 1700 } });
    assert.equal(statusSummary(me2, parseStatus(STATUS)).level, 'warning');
  });

  it('an unreachable engine is level error with the reason on one line', () => {
    const s = errorSummary('cannot reach the Potluck engine at http://127.0.0.1:8765/:\nConnection refused');
    assert.equal(s.level, 'error');
    assert.equal(s.title, 'cannot reach the Potluck engine at http://127.0.0.1:8765/: Connection refused');
  });
});

describe('run output', () => {
  it('concatenates output and messages; notes how a run ended', () => {
    const events = [
      { seq: 0, type: 'status', state: 'running' },
      { seq: 1, type: 'output', stream: 'stdout', text: 'Paris\n' },
      { seq: 2, type: 'message', body: { answer: 'Paris' } },
      { seq: 3, type: 'usage', decode_tokens: 3 },
      { seq: 4, type: 'status', state: 'failed', error: 'fuel\nexhausted' }
    ];
    assert.equal(events.map(eventText).join(''), 'Paris\n[message] {"answer":"Paris"}\n[failed] fuel exhausted\n');
    assert.equal(eventText({ type: 'status', state: 'cancelled' }), '[cancelled]\n');
    assert.equal(eventText({ type: 'error', error: { code: 'x', message: 'bad message' } }), '[error] bad message\n');
    assert.equal(eventText(null), '');
  });

  it('knows which states are final', () => {
    assert.equal(runEnded('finished'), true);
    assert.equal(runEnded('failed'), true);
    assert.equal(runEnded('cancelled'), true);
    assert.equal(runEnded('running'), false);
    assert.equal(runEnded('queued'), false);
  });

  it("takes the run states from the engine's status, and the defaults from an engine that sends none", () => {
    // A newer engine with a state this frontend has never heard of.
    const states = { live: ['queued', 'running', 'paused'], done: ['finished', 'failed', 'cancelled', 'expired'] };
    const s = parseStatus({ ...STATUS, run_states: states });
    assert.deepEqual(s.runStates, states);
    assert.equal(runEnded('expired', s.runStates), true);
    assert.equal(runEnded('paused', s.runStates), false);
    assert.equal(runEnded('expired'), false);
    const runs = [
      { id: 'r1', owner: 'bob', state: 'expired' },
      { id: 'r2', owner: 'bob', state: 'paused' }
    ].map(r => ({ ...r, error: null, created: null, started: null, finished: null, tokens: 0, fuel: 0, kind: 'python' }));
    assert.deepEqual(activeRunsByOwner(runs, s.runStates), { bob: 1 });

    assert.deepEqual(parseStatus(STATUS).runStates, DEFAULT_RUN_STATES);
    assert.deepEqual(parseStatus({ ...STATUS, run_states: { live: 'running', done: [] } }).runStates, DEFAULT_RUN_STATES);
    assert.deepEqual(parseStatus({ ...STATUS, run_states: { live: ['queued'], done: ['finished', 3] } }).runStates,
      DEFAULT_RUN_STATES);
  });
});

describe('the admin quota form', () => {
  it('parses each field', () => {
    assert.equal(parseQuotaInput('kv_pages', ''), undefined);
    assert.equal(parseQuotaInput('kv_pages', ' 128 '), 128);
    assert.equal(parseQuotaInput('tokens_per_minute', 'none'), null);
    assert.equal(parseQuotaInput('tokens_per_minute', '∞'), null);
    assert.equal(parseQuotaInput('weight', '2.5'), 2.5);
    assert.equal(parseQuotaInput('priority', 'batch'), 'batch');
    assert.deepEqual(parseQuotaInput('models', 'a, b,'), ['a', 'b']);
    assert.throws(() => parseQuotaInput('kv_pages', '1.5'), /whole number/);
    assert.throws(() => parseQuotaInput('kv_pages', '-1'), /non-negative/);
    assert.throws(() => parseQuotaInput('kv_pages', 'lots'), /non-negative/);
    assert.throws(() => parseQuotaInput('weight', '0'), /positive/);
    assert.throws(() => parseQuotaInput('weight', 'none'), /positive/);
    assert.throws(() => parseQuotaInput('priority', 'urgent'), /interactive/);
  });

  it('builds the override body and round-trips existing values', () => {
    assert.deepEqual(quotaOverrideFromForm({ kv_pages: '64', tokens_per_day: 'none', weight: '' }), {
      kv_pages: 64,
      tokens_per_day: null
    });
    assert.throws(() => quotaOverrideFromForm({ kv_pages: 'x', weight: '-2' }), /kv_pages.*; weight/);
    assert.equal(quotaInputText(undefined), '');
    assert.equal(quotaInputText(null), 'none');
    assert.equal(quotaInputText(64), '64');
    assert.equal(quotaInputText(['a', 'b']), 'a, b');
  });
});
