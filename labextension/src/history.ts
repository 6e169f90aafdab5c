/**
 * The usage history the admin dashboard plots (`GET /api/admin/usage`): parsing the engine's
 * sparse buckets, turning them into one value per bucket, and the geometry of a small line
 * chart (scales, ticks, SVG paths). No DOM and no JupyterLab imports, so `jlpm test` checks it
 * with Node's own test runner; `dashboard.ts` draws what this computes.
 */

import { QuotaValue } from './model';

export type Resolution = 'minute' | 'hour';

/** One bucket's amounts (the engine's USAGE_FIELDS). */
export interface IUsagePoint {
  /** Start of the bucket, ms since the epoch. */
  t: number;
  prefillTokens: number;
  decodeTokens: number;
  pageSeconds: number;
  fuel: number;
  requests: number;
}

export interface IGroupHistory {
  members: string[];
  /** The group's `potluck` property as the engine last read it from the Hub (null: none seen). */
  quota: { [field: string]: QuotaValue } | null;
  /** Why the Hub's value could not be read (the last good quota is in effect meanwhile). */
  error: string | null;
  /** What an admin should know about the quota (e.g. kv_pages above the engine's KV pool). */
  warnings: string[];
  points: IUsagePoint[];
}

export interface IUsageHistory {
  resolution: Resolution;
  bucketSeconds: number;
  since: number;
  until: number;
  users: { [name: string]: IUsagePoint[] };
  groups: { [name: string]: IGroupHistory };
}

/** What a chart shows per bucket. */
export type Metric = 'tokens' | 'requests' | 'fuel' | 'page_seconds';

export const METRIC_LABELS: { [m in Metric]: string } = {
  tokens: 'tokens',
  requests: 'requests',
  fuel: 'fuel',
  page_seconds: 'KV page-seconds'
};

/** The time ranges the dashboard offers, each at the resolution that can show it. */
export interface IRange {
  key: string;
  label: string;
  resolution: Resolution;
  seconds: number;
}

export const RANGES: IRange[] = [
  { key: '1h', label: 'last hour (per minute)', resolution: 'minute', seconds: 3600 },
  { key: '6h', label: 'last 6 hours (per minute)', resolution: 'minute', seconds: 6 * 3600 },
  // 48 hours per hour, not per minute: 2880 minutes a user is ~15 MB for a class of 100, per refresh.
  { key: '48h', label: 'last 48 hours (per hour)', resolution: 'hour', seconds: 48 * 3600 },
  { key: '7d', label: 'last 7 days (per hour)', resolution: 'hour', seconds: 7 * 86400 },
  { key: '90d', label: 'last 90 days (per hour)', resolution: 'hour', seconds: 90 * 86400 }
];

/**
 * How often a range's history is fetched again (ms): every 5 s for the last hour (the current
 * minute fills up live), then about every 1/720 of the range, at most once a minute: longer
 * ranges are bigger answers and change little between two looks.
 */
export function historyRefreshMs(range: IRange): number {
  return Math.min(60000, Math.max(5000, Math.round(range.seconds / 720) * 1000));
}

export function rangeOf(key: string): IRange {
  return RANGES.find(r => r.key === key) || RANGES[0];
}

/** The request for a range ending now (`now`: ms since the epoch), relative to the API's base. */
export function historyPath(range: IRange, now: number): string {
  const since = new Date(now - range.seconds * 1000).toISOString();
  return `admin/usage?resolution=${range.resolution}&since=${encodeURIComponent(since)}`;
}

// ---------------------------------------------------------------- parsing

function obj(v: unknown): { [k: string]: any } {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as any) : {};
}

function num(v: unknown): number {
  return typeof v === 'number' && isFinite(v) ? v : 0;
}

function time(v: unknown, fallback: number): number {
  const t = typeof v === 'string' ? Date.parse(v) : NaN;
  return isNaN(t) ? fallback : t;
}

/** Rows of `columns` (["start", "prefill_tokens", ...]) to points; rows that cannot be read are dropped. */
function parsePoints(rows: unknown, columns: string[]): IUsagePoint[] {
  if (!Array.isArray(rows)) {
    return [];
  }
  const at = (name: string) => columns.indexOf(name);
  const [it, ip, id, ips, iff, ir] = ['start', 'prefill_tokens', 'decode_tokens', 'page_seconds', 'fuel', 'requests'].map(at);
  const out: IUsagePoint[] = [];
  for (const row of rows) {
    if (!Array.isArray(row) || it < 0) {
      continue;
    }
    const t = time(row[it], NaN);
    if (isNaN(t)) {
      continue;
    }
    out.push({
      t,
      prefillTokens: num(row[ip]),
      decodeTokens: num(row[id]),
      pageSeconds: num(row[ips]),
      fuel: num(row[iff]),
      requests: num(row[ir])
    });
  }
  return out.sort((a, b) => a.t - b.t);
}

/** `GET potluck/api/admin/usage`. */
export function parseUsageHistory(body: unknown, now: number = Date.now()): IUsageHistory {
  const b = obj(body);
  const columns = Array.isArray(b.columns) ? b.columns.map(String) : [];
  const resolution: Resolution = b.resolution === 'hour' ? 'hour' : 'minute';
  const bucketSeconds = num(b.bucket_seconds) || (resolution === 'hour' ? 3600 : 60);
  const users: { [name: string]: IUsagePoint[] } = {};
  for (const [name, rows] of Object.entries(obj(b.users))) {
    users[name] = parsePoints(rows, columns);
  }
  const groups: { [name: string]: IGroupHistory } = {};
  for (const [name, g] of Object.entries(obj(b.groups))) {
    const o = obj(g);
    const quota = o.quota && typeof o.quota === 'object' && !Array.isArray(o.quota) ? (o.quota as any) : null;
    groups[name] = {
      members: Array.isArray(o.members) ? o.members.map(String) : [],
      quota,
      error: typeof o.error === 'string' && o.error ? o.error : null,
      warnings: Array.isArray(o.warnings) ? o.warnings.filter((w: unknown) => typeof w === 'string') : [],
      points: parsePoints(o.series, columns)
    };
  }
  const until = time(b.until, now);
  return { resolution, bucketSeconds, since: time(b.since, until - 3600 * 1000), until, users, groups };
}

// ---------------------------------------------------------------- series

export function metricOf(p: IUsagePoint, metric: Metric): number {
  switch (metric) {
    case 'tokens':
      return p.prefillTokens + p.decodeTokens;
    case 'requests':
      return p.requests;
    case 'fuel':
      return p.fuel;
    case 'page_seconds':
      return p.pageSeconds;
  }
}

/** How many buckets lie between `since` and `until` (both ms; at least one). */
export function bucketCount(since: number, until: number, bucketSeconds: number): number {
  return Math.max(1, Math.floor((until - since) / (bucketSeconds * 1000)) + 1);
}

/** One value per bucket from `since` (zero where the engine sent no bucket: nothing was used). */
export function denseValues(points: IUsagePoint[], since: number, count: number, bucketSeconds: number,
  metric: Metric): number[] {
  const values = new Array<number>(count).fill(0);
  const step = bucketSeconds * 1000;
  for (const p of points) {
    const i = Math.floor((p.t - since) / step);
    if (i >= 0 && i < count) {
      values[i] += metricOf(p, metric);
    }
  }
  return values;
}

export function total(points: IUsagePoint[], metric: Metric): number {
  return points.reduce((sum, p) => sum + metricOf(p, metric), 0);
}

export interface ISeries {
  name: string;
  values: number[];
  total: number;
  /** How many series were folded into this one ("others"); 0 for a named series. */
  folded: number;
}

/**
 * The series a chart shows: the `limit` largest by total (then by name), and the rest summed as
 * one "others" series, so a class of a hundred students still gives a readable chart. Series
 * with no use in the window are left out.
 */
export function topSeries(byName: { [name: string]: IUsagePoint[] }, history: IUsageHistory, metric: Metric,
  limit = 8): ISeries[] {
  const count = bucketCount(history.since, history.until, history.bucketSeconds);
  const all = Object.keys(byName)
    .map(name => {
      const values = denseValues(byName[name], history.since, count, history.bucketSeconds, metric);
      return { name, values, total: values.reduce((a, b) => a + b, 0), folded: 0 };
    })
    .filter(s => s.total > 0)
    .sort((a, b) => b.total - a.total || (a.name < b.name ? -1 : 1));
  if (all.length <= limit) {
    return all;
  }
  const shown = all.slice(0, limit - 1);
  const rest = all.slice(limit - 1);
  const values = new Array<number>(count).fill(0);
  for (const s of rest) {
    s.values.forEach((v, i) => (values[i] += v));
  }
  shown.push({ name: `others (${rest.length})`, values, total: rest.reduce((a, s) => a + s.total, 0), folded: rest.length });
  return shown;
}

// ---------------------------------------------------------------- chart geometry

/** The smallest 1, 2 or 5 × 10^k at or above `v` (1 for nothing): the top of a y axis. */
export function niceMax(v: number): number {
  if (!(v > 0)) {
    return 1;
  }
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) {
    if (m * p >= v * (1 - 1e-9)) {
      return m * p;
    }
  }
  return 10 * p;
}

/** The y-axis values from 0 to `max` (a `niceMax`): steps of 1, 2 or 5 times a power of ten. */
export function yTicks(max: number): number[] {
  const p = Math.pow(10, Math.floor(Math.log10(max)));
  const lead = Math.round(max / p);
  const n = lead === 2 ? 4 : 5;           // 1 -> 0.2 steps, 2 -> 0.5, 5 -> 1, 10 -> 2
  return Array.from({ length: n + 1 }, (_, i) => Math.round(((max * i) / n) * 1e9) / 1e9);
}

/** A y-axis label: whole numbers as counts ("1.2k"), fractions with one decimal ("0.4"). */
export function formatTick(v: number): string {
  if (v !== 0 && Math.abs(v) < 10 && !Number.isInteger(v)) {
    return String(Math.round(v * 10) / 10);
  }
  const a = Math.abs(v);
  if (a < 1000) {
    return String(Math.round(v));
  }
  for (const [size, unit] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']] as [number, string][]) {
    if (a >= size) {
      return String(Math.round((v / size) * 10) / 10) + unit;
    }
  }
  return String(v);
}

/** An SVG path through the values, x spread over `width`, y from `height` (0) up to 0 (`max`). */
export function linePath(values: number[], width: number, height: number, max: number): string {
  if (values.length === 0) {
    return '';
  }
  const dx = values.length > 1 ? width / (values.length - 1) : 0;
  const y = (v: number) => height - (Math.min(v, max) / (max || 1)) * height;
  const r = (v: number) => Math.round(v * 10) / 10;
  return values.map((v, i) => `${i ? 'L' : 'M'}${r(i * dx)},${r(y(v))}`).join('');
}

function pad(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** A bucket's start for an axis, in the browser's time zone: "14:05" (minutes), "Mar 1 14:00" (hours). */
export function formatBucketTime(t: number, resolution: Resolution): string {
  const d = new Date(t);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return resolution === 'minute' ? hm : `${MONTHS[d.getMonth()]} ${d.getDate()} ${hm}`;
}

/** About `n` evenly spaced x-axis labels: the bucket index and its time. */
export function timeTicks(history: IUsageHistory, n = 5): { index: number; label: string }[] {
  const count = bucketCount(history.since, history.until, history.bucketSeconds);
  const step = Math.max(1, Math.round((count - 1) / Math.max(1, n - 1)));
  const out: { index: number; label: string }[] = [];
  for (let i = 0; i < count; i += step) {
    out.push({ index: i, label: formatBucketTime(history.since + i * history.bucketSeconds * 1000, history.resolution) });
  }
  return out;
}

/** Distinct colours for up to eight series (then they repeat); "others" is grey. */
export const PALETTE = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];

export function seriesColor(s: ISeries, index: number): string {
  return s.folded ? '#999999' : PALETTE[index % PALETTE.length];
}
