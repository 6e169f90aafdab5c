/**
 * The admin dashboard's model, with Node's own test runner (`jlpm test`): the usage history
 * (parsing, one value per bucket, the series a chart shows), the chart's geometry, and what the
 * panel says when the engine cannot be reached.
 */

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  bucketCount,
  denseValues,
  formatBucketTime,
  formatTick,
  historyPath,
  historyRefreshMs,
  linePath,
  niceMax,
  parseUsageHistory,
  rangeOf,
  seriesColor,
  timeTicks,
  topSeries,
  total,
  yTicks
} from '../src/history';
import { failureText, formatQuotaFields, isUnreachable, parseWarnings, PotluckError, quotaSourceSummary } from '../src/model';

process.env.TZ = 'UTC';

const T0 = Date.parse('2026-03-01T10:00:00Z');
const COLUMNS = ['start', 'prefill_tokens', 'decode_tokens', 'page_seconds', 'fuel', 'requests'];

function answer(users: { [name: string]: [string, number, number][] }, groups: any = {}) {
  const rows = (xs: [string, number, number][]) => xs.map(([t, pre, dec]) => [t, pre, dec, 0.5, 0, 1]);
  const out: any = {
    resolution: 'minute',
    bucket_seconds: 60,
    since: '2026-03-01T10:00:00+00:00',
    until: '2026-03-01T10:09:30+00:00',
    columns: COLUMNS,
    users: {},
    groups: {}
  };
  for (const name of Object.keys(users)) {
    out.users[name] = rows(users[name]);
  }
  for (const name of Object.keys(groups)) {
    out.groups[name] = { ...groups[name], series: rows(groups[name].series) };
  }
  return out;
}

describe('parseUsageHistory', () => {
  it('reads users and groups by the columns the engine names', () => {
    const h = parseUsageHistory(answer(
      { alice: [['2026-03-01T10:02:00+00:00', 10, 5]], bob: [] },
      { students: { members: ['alice'], quota: { tokens_per_minute: 5000 }, error: null,
        series: [['2026-03-01T10:02:00+00:00', 10, 5]] } }
    ));
    assert.equal(h.resolution, 'minute');
    assert.equal(h.bucketSeconds, 60);
    assert.equal(h.since, T0);
    assert.deepEqual(h.users.alice, [{ t: T0 + 120000, prefillTokens: 10, decodeTokens: 5, pageSeconds: 0.5, fuel: 0, requests: 1 }]);
    assert.deepEqual(h.users.bob, []);
    assert.deepEqual(h.groups.students.members, ['alice']);
    assert.deepEqual(h.groups.students.quota, { tokens_per_minute: 5000 });
    assert.equal(h.groups.students.error, null);
    assert.equal(h.groups.students.points.length, 1);
  });

  it('follows the columns when the engine orders them differently', () => {
    const h = parseUsageHistory({
      resolution: 'hour', columns: ['decode_tokens', 'start', 'prefill_tokens'],
      users: { alice: [[7, '2026-03-01T10:00:00Z', 3]] }
    });
    assert.equal(h.resolution, 'hour');
    assert.equal(h.bucketSeconds, 3600);
    assert.equal(h.users.alice[0].decodeTokens, 7);
    assert.equal(h.users.alice[0].prefillTokens, 3);
  });

  it('drops rows it cannot read and survives a body that is not an answer', () => {
    const h = parseUsageHistory({ columns: COLUMNS, users: { alice: [['not a time', 1, 1], 'x', null] } });
    assert.deepEqual(h.users.alice, []);
    const empty = parseUsageHistory('<html>');
    assert.deepEqual(empty.users, {});
    assert.deepEqual(empty.groups, {});
  });

  it('keeps a group read error for the admin', () => {
    const h = parseUsageHistory(answer({}, { ta: { members: [], quota: {}, error: 'not a JSON object',
      warnings: ['kv_pages 9999 is above the pool', 3], series: [] } }));
    assert.equal(h.groups.ta.error, 'not a JSON object');
    assert.deepEqual(h.groups.ta.warnings, ['kv_pages 9999 is above the pool']);
  });
});

describe('series', () => {
  const h = parseUsageHistory(answer({
    alice: [['2026-03-01T10:00:00Z', 10, 5], ['2026-03-01T10:03:00Z', 1, 1]],
    bob: [['2026-03-01T10:09:00Z', 100, 0]],
    idle: []
  }));

  it('has one value per bucket, zero where nothing was used', () => {
    const n = bucketCount(h.since, h.until, h.bucketSeconds);
    assert.equal(n, 10);
    assert.deepEqual(denseValues(h.users.alice, h.since, n, 60, 'tokens'), [15, 0, 0, 2, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual(denseValues(h.users.bob, h.since, n, 60, 'requests'), [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert.equal(total(h.users.alice, 'tokens'), 17);
  });

  it('shows the biggest users first and leaves out users without use', () => {
    const s = topSeries(h.users, h, 'tokens');
    assert.deepEqual(s.map(x => [x.name, x.total]), [['bob', 100], ['alice', 17]]);
  });

  it('folds everyone past the limit into one "others" series', () => {
    const many: any = {};
    for (let i = 0; i < 12; i++) {
      many[`u${i}`] = [{ t: T0, prefillTokens: i + 1, decodeTokens: 0, pageSeconds: 0, fuel: 0, requests: 0 }];
    }
    const s = topSeries(many, h, 'tokens', 4);
    assert.equal(s.length, 4);
    assert.deepEqual(s.slice(0, 3).map(x => x.name), ['u11', 'u10', 'u9']);
    assert.equal(s[3].name, 'others (9)');
    assert.equal(s[3].folded, 9);
    assert.equal(s[3].total, 1 + 2 + 3 + 4 + 5 + 6 + 7 + 8 + 9);
    assert.equal(seriesColor(s[3], 3), '#999999');
    assert.notEqual(seriesColor(s[0], 0), seriesColor(s[1], 1));
  });
});

describe('chart geometry', () => {
  it('rounds the axis up to 1, 2 or 5 times a power of ten', () => {
    assert.equal(niceMax(0), 1);
    assert.equal(niceMax(7), 10);
    assert.equal(niceMax(120), 200);
    assert.equal(niceMax(2000), 2000);
    assert.equal(niceMax(0.3), 0.5);
    assert.deepEqual(yTicks(200), [0, 50, 100, 150, 200]);
    assert.deepEqual(yTicks(50), [0, 10, 20, 30, 40, 50]);
    assert.deepEqual(yTicks(1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
    assert.deepEqual(yTicks(10), [0, 2, 4, 6, 8, 10]);
    assert.deepEqual([0, 0.2, 0.5, 40, 2500, 1.5e6].map(formatTick), ['0', '0.2', '0.5', '40', '2.5k', '1.5M']);
  });

  it('draws a line across the width, zero at the bottom, the maximum at the top', () => {
    assert.equal(linePath([0, 50, 100], 200, 100, 100), 'M0,100L100,50L200,0');
    assert.equal(linePath([5], 200, 100, 10), 'M0,50');
    assert.equal(linePath([], 200, 100, 10), '');
  });

  it('labels minutes by time of day and hours with the date', () => {
    assert.equal(formatBucketTime(T0 + 5 * 60000, 'minute'), '10:05');
    assert.equal(formatBucketTime(T0, 'hour'), 'Mar 1 10:00');
    const h = parseUsageHistory(answer({}));
    const ticks = timeTicks(h, 4);
    assert.equal(ticks[0].label, '10:00');
    assert.ok(ticks.length >= 3 && ticks.length <= 5, JSON.stringify(ticks));
  });

  it('asks the engine for the range at its resolution', () => {
    const path = historyPath(rangeOf('7d'), T0);
    assert.equal(path, `admin/usage?resolution=hour&since=${encodeURIComponent('2026-02-22T10:00:00.000Z')}`);
    assert.equal(rangeOf('nonsense').key, '1h');
    assert.equal(rangeOf('48h').resolution, 'hour');
  });

  it('fetches long ranges less often', () => {
    assert.equal(historyRefreshMs(rangeOf('1h')), 5000);
    assert.equal(historyRefreshMs(rangeOf('6h')), 30000);
    assert.equal(historyRefreshMs(rangeOf('90d')), 60000);
  });
});

describe('what the panel says when a request fails', () => {
  it('says "engine unreachable" with the reason when there is no engine to answer', () => {
    const down = new PotluckError('cannot reach the Potluck engine at http://127.0.0.1:8765/: Connection refused', 502);
    assert.equal(failureText(down), 'engine unreachable: cannot reach the Potluck engine at http://127.0.0.1:8765/: Connection refused');
    assert.match(failureText(new PotluckError('cannot reach this Jupyter server: Failed to fetch', 0)), /^engine unreachable: /);
    assert.match(failureText(new PotluckError('the engine is not running', 503)), /^engine unreachable: /);
  });

  it('gives a refusal as it is: the engine answered', () => {
    assert.equal(failureText(new PotluckError('this endpoint is for admins only', 403)), 'this endpoint is for admins only');
    assert.equal(isUnreachable(429), false);
    assert.equal(isUnreachable(504), true);
  });
});

describe('quota sources in one line', () => {
  it('names the fields each non-default source sets, the user override first', () => {
    const src = { tokens_per_minute: 'group:students', kv_pages: 'group:students', weight: 'user', max_runs: 'default' };
    assert.equal(quotaSourceSummary(src), 'user override: weight · group:students: tokens_per_minute, kv_pages');
    assert.equal(quotaSourceSummary({ weight: 'default' }), 'defaults');
    assert.equal(quotaSourceSummary(null), '');
  });

  it('writes a partial quota as field=value', () => {
    assert.equal(formatQuotaFields({ kv_pages: null, tokens_per_minute: 5000 }), 'tokens_per_minute=5000, kv_pages=∞');
  });
});

describe('admin warnings', () => {
  it('reads the warnings of the tenants report, one line each, and nothing from an older engine', () => {
    assert.deepEqual(parseWarnings({ tenants: [], warnings: ['group \'a\': kv_pages 9000\nis above', 5] }),
      ["group 'a': kv_pages 9000 is above"]);
    assert.deepEqual(parseWarnings({ tenants: [] }), []);
  });
});
