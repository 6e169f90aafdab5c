/**
 * The Potluck frontend's model: parsing the engine's answers and formatting
 * them for people. No JupyterLab imports, so `jlpm test` checks it with
 * Node's own test runner.
 */

export type Level = 'ok' | 'warning' | 'critical' | 'error';

/** An answer that was not a success, with the engine's (or the server's) one-line reason. */
export class PotluckError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/**
 * A JSON request to the engine's API (`path` relative to `api/`), the parsed answer or a
 * `PotluckError`: the lab's same-origin proxy (`api.ts`) or the engine's own page (`standalone.ts`).
 */
export interface IRequester {
  request<T = any>(path: string, method?: string, body?: unknown): Promise<T>;
}

/**
 * Whether a failed request means the engine cannot be reached at all (rather than that it
 * refused): no answer (status 0), the server extension's 502 "cannot reach the engine", or a
 * 503/504 (the engine is not running yet, or the Hub in front of it is down).
 */
export function isUnreachable(status: number): boolean {
  return status === 0 || status === 502 || status === 503 || status === 504;
}

/** What the panel says about a failed request: "engine unreachable: <reason>", or the reason. */
export function failureText(err: unknown): string {
  const message = oneLine(String((err as Error)?.message || err || 'unknown error'));
  const status = err instanceof PotluckError ? err.status : typeof (err as any)?.status === 'number' ? (err as any).status : -1;
  return isUnreachable(status) ? `engine unreachable: ${message}` : message;
}

/** Share of a limit at which the status item turns to the warning / critical colour. */
export const WARN_AT = 0.8;
export const CRITICAL_AT = 0.95;

/** An inferlet run's states: not ended yet (`live`) and ended (`done`). */
export interface IRunStates {
  live: string[];
  done: string[];
}

/**
 * The run states of an engine whose `/api/status` has no `run_states` (older than this
 * frontend). Newer engines send theirs (engine/protocol.py), and those win: the engine may be
 * upgraded apart from the servers that show its runs.
 */
export const DEFAULT_RUN_STATES: IRunStates = {
  live: ['queued', 'running'],
  done: ['finished', 'failed', 'cancelled']
};

/** Quota fields in the order the panel shows them (engine/tenants.py Quota). */
export const QUOTA_FIELDS = [
  'tokens_per_minute',
  'tokens_per_day',
  'kv_pages',
  'kv_pages_soft',
  'max_runs',
  'max_concurrent_requests',
  'max_tokens_per_request',
  'fuel_per_run',
  'max_run_seconds',
  'memory_mb_per_run',
  'weight',
  'priority',
  'models'
];

/** Short names for the quota table (the row keeps the engine's field name in `data-field`). */
export const QUOTA_LABELS: { [field: string]: string } = {
  tokens_per_minute: 'tokens / minute',
  tokens_per_day: 'tokens / day',
  kv_pages: 'KV pages',
  kv_pages_soft: 'KV pages kept on device',
  max_runs: 'concurrent runs',
  max_concurrent_requests: 'concurrent requests',
  max_tokens_per_request: 'tokens / request',
  fuel_per_run: 'fuel / run',
  max_run_seconds: 'time / run',
  memory_mb_per_run: 'memory / run',
  weight: 'weight',
  priority: 'priority',
  models: 'models'
};

/** Fields the admin's edit form offers (all of them but `models`, which is a list). */
export const EDITABLE_QUOTA_FIELDS = QUOTA_FIELDS.filter(f => f !== 'models');

export type QuotaValue = number | string | string[] | null;

export interface IEngineStatus {
  version: string;
  model: string;
  deviceKind: string;
  deviceName: string;
  deviceMemoryBytes: number;
  profile: string;
  dtype: string;
  scheduler: string;
  pageSize: number;
  totalPages: number;
  freePages: number;
  activeTenants: number;
  queueDepth: number;
  runningGenerations: number;
  /** Non-admins see the load rounded down to these steps (1: exact); see `approx`. */
  requestStep: number;
  tenantStep: number;
  uptimeSeconds: number;
  runStates: IRunStates;
}

export interface IUsage {
  tokensLastMinute: number;
  tokensToday: number;
  prefillTokens: number;
  decodeTokens: number;
  fuel: number;
  activeRequests: number;
  activeRuns: number;
}

/**
 * What a user felt lately (the engine's `latency` in a tenant report, engine/latency.py): time to
 * first token and between tokens, p50 and p99 in milliseconds over the tenant's recent
 * generations; null where there is no sample yet.
 */
export interface ILatency {
  ttftP50Ms: number | null;
  ttftP99Ms: number | null;
  tbtP50Ms: number | null;
  tbtP99Ms: number | null;
  generations: number;
}

export interface IMe {
  name: string;
  groups: string[];
  isAdmin: boolean;
  quota: { [field: string]: QuotaValue };
  quotaSource: { [field: string]: string };
  usage: IUsage;
  kvPages: number;
  override: { [field: string]: QuotaValue } | null;
  /** null from an engine that does not report latency (older than this frontend). */
  latency: ILatency | null;
}

export interface IRun {
  id: string;
  owner: string;
  state: string;
  error: string | null;
  created: string | null;
  started: string | null;
  finished: string | null;
  tokens: number;
  fuel: number;
  kind: string;
}

export interface ISavedContext {
  name: string;
  nTokens: number;
}

export interface ITenant {
  name: string;
  live: boolean;
  groups: string[];
  quota: { [field: string]: QuotaValue } | null;
  quotaSource: { [field: string]: string } | null;
  usage: IUsage | null;
  kvPages: number;
  override: { [field: string]: QuotaValue } | null;
  totalTokens: number | null;
  latency: ILatency | null;
}

// ---------------------------------------------------------------- parsing

function obj(v: unknown): { [k: string]: any } {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as any) : {};
}

function num(v: unknown, fallback = 0): number {
  return typeof v === 'number' && isFinite(v) ? v : fallback;
}

function str(v: unknown, fallback = ''): string {
  return typeof v === 'string' ? v : fallback;
}

function strings(v: unknown): string[] | null {
  return Array.isArray(v) && v.length > 0 && v.every(x => typeof x === 'string') ? v : null;
}

/** The engine's `run_states`, or the defaults when it sends none or a shape this frontend cannot read. */
export function parseRunStates(body: unknown): IRunStates {
  const r = obj(body);
  const live = strings(r.live);
  const done = strings(r.done);
  return live && done ? { live, done } : DEFAULT_RUN_STATES;
}

/** `GET potluck/api/status`. */
export function parseStatus(body: unknown): IEngineStatus {
  const s = obj(body);
  const device = obj(s.device);
  const profile = obj(s.profile);
  const kv = obj(s.kv);
  return {
    version: str(s.version),
    model: str(s.model, '?'),
    deviceKind: str(device.kind, '?'),
    deviceName: str(device.name, '?'),
    deviceMemoryBytes: num(device.total_bytes),
    profile: str(profile.name, '?'),
    dtype: str(profile.dtype),
    scheduler: str(s.scheduler),
    pageSize: num(kv.page_size),
    totalPages: num(kv.total_pages),
    freePages: num(kv.free_pages),
    activeTenants: num(s.active_tenants),
    queueDepth: num(s.queue_depth),
    runningGenerations: num(s.running_generations),
    requestStep: s.coarse ? Math.max(1, num(obj(s.granularity).requests)) : 1,
    tenantStep: s.coarse ? Math.max(1, num(obj(s.granularity).tenants)) : 1,
    uptimeSeconds: num(s.uptime_seconds),
    runStates: parseRunStates(s.run_states)
  };
}

export function parseUsage(body: unknown): IUsage {
  const u = obj(body);
  return {
    tokensLastMinute: num(u.tokens_last_minute),
    tokensToday: num(u.tokens_today),
    prefillTokens: num(u.prefill_tokens),
    decodeTokens: num(u.decode_tokens),
    fuel: num(u.fuel),
    activeRequests: num(u.active_requests),
    activeRuns: num(u.active_runs)
  };
}

function quotaOf(v: unknown): { [field: string]: QuotaValue } {
  const q = obj(v);
  const out: { [field: string]: QuotaValue } = {};
  for (const k of Object.keys(q)) {
    out[k] = q[k] as QuotaValue;
  }
  return out;
}

function msOrNull(v: unknown): number | null {
  return typeof v === 'number' && isFinite(v) && v >= 0 ? v : null;
}

/** A report's `latency`; null when the engine sends none (older engines) or not an object. */
export function parseLatency(v: unknown): ILatency | null {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    return null;
  }
  const l = v as { [k: string]: unknown };
  return {
    ttftP50Ms: msOrNull(l.ttft_p50_ms),
    ttftP99Ms: msOrNull(l.ttft_p99_ms),
    tbtP50Ms: msOrNull(l.tbt_p50_ms),
    tbtP99Ms: msOrNull(l.tbt_p99_ms),
    generations: num(l.generations)
  };
}

function sourceOf(v: unknown): { [field: string]: string } {
  const s = obj(v);
  const out: { [field: string]: string } = {};
  for (const k of Object.keys(s)) {
    out[k] = str(s[k]);
  }
  return out;
}

/** `GET potluck/api/me`. */
export function parseMe(body: unknown): IMe {
  const m = obj(body);
  return {
    name: str(m.name),
    groups: Array.isArray(m.groups) ? m.groups.map(String) : [],
    isAdmin: m.is_admin === true,
    quota: quotaOf(m.quota),
    quotaSource: sourceOf(m.quota_source),
    usage: parseUsage(m.usage),
    kvPages: num(m.kv_pages),
    override: m.override ? quotaOf(m.override) : null,
    latency: parseLatency(m.latency)
  };
}

export function parseRun(body: unknown): IRun {
  const r = obj(body);
  const usage = obj(r.usage);
  return {
    id: str(r.id),
    owner: str(r.owner),
    state: str(r.state, '?'),
    error: typeof r.error === 'string' ? r.error : null,
    created: typeof r.created === 'string' ? r.created : null,
    started: typeof r.started === 'string' ? r.started : null,
    finished: typeof r.finished === 'string' ? r.finished : null,
    tokens: num(usage.prefill_tokens) + num(usage.decode_tokens),
    fuel: num(usage.fuel),
    kind: str(r.kind, 'python')
  };
}

/** `GET potluck/api/runs` and `GET potluck/api/admin/runs`: `{"runs": [...]}`. */
export function parseRuns(body: unknown): IRun[] {
  const runs = obj(body).runs;
  return Array.isArray(runs) ? runs.map(parseRun).filter(r => r.id) : [];
}

/** `GET potluck/api/contexts`. */
export function parseContexts(body: unknown): ISavedContext[] {
  const list = obj(body).contexts;
  return Array.isArray(list)
    ? list.map(c => ({ name: str(obj(c).name), nTokens: num(obj(c).n_tokens) })).filter(c => c.name)
    : [];
}

/** `GET potluck/api/admin/tenants`. */
export function parseTenants(body: unknown): ITenant[] {
  const list = obj(body).tenants;
  if (!Array.isArray(list)) {
    return [];
  }
  return list
    .map(t => {
      const o = obj(t);
      const total = o.usage_total ? obj(o.usage_total) : null;
      let totalTokens: number | null = null;
      if (total) {
        totalTokens = num(total.prefill_tokens) + num(total.decode_tokens);
      }
      return {
        name: str(o.name),
        live: o.live !== false,
        groups: Array.isArray(o.groups) ? o.groups.map(String) : [],
        quota: o.quota ? quotaOf(o.quota) : null,
        quotaSource: o.quota_source ? sourceOf(o.quota_source) : null,
        usage: o.usage ? parseUsage(o.usage) : null,
        kvPages: num(o.kv_pages),
        override: o.override ? quotaOf(o.override) : null,
        totalTokens,
        latency: parseLatency(o.latency)
      };
    })
    .filter(t => t.name);
}

/** `GET potluck/api/admin/tenants`'s `warnings`: one line each (quotas the KV pool makes moot, ...). */
export function parseWarnings(body: unknown): string[] {
  const w = obj(body).warnings;
  return Array.isArray(w) ? w.filter(x => typeof x === 'string').map(x => oneLine(x)) : [];
}

/** The one-line message of an engine error body (`{"error": {"code", "message"}}`), or a fallback. */
export function errorMessage(status: number, body: unknown, fallback = ''): string {
  const err = obj(obj(body).error);
  // A 503 of an engine that could not start carries its one-line reason as model_error.
  let msg = str(err.message) || str(obj(body).model_error) || str(obj(body).message) || fallback;
  if (!msg) {
    msg = `HTTP ${status}`;
  }
  return oneLine(msg);
}

/** Collapse whitespace (newlines included) so an error always fits on one line. */
export function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

// ---------------------------------------------------------------- formatting

function trimZero(s: string): string {
  return s.replace(/\.0$/, '');
}

/** A count as plain digits below a million ("1234"), then "1.2M", "3.4G"; null (no limit) is "∞". */
export function formatCount(n: number | null | undefined): string {
  if (n === null || n === undefined) {
    return '∞';
  }
  const a = Math.abs(n);
  if (a < 1e6) {
    return String(Math.round(n));
  }
  if (a < 1e9) {
    return trimZero((n / 1e6).toFixed(1)) + 'M';
  }
  if (a < 1e12) {
    return trimZero((n / 1e9).toFixed(1)) + 'G';
  }
  return trimZero((n / 1e12).toFixed(1)) + 'T';
}

/** A large quantity in short form: "950", "12.3k", "4.5M", "20G" (fuel, tokens in tables). */
export function formatCompact(n: number | null | undefined): string {
  if (n === null || n === undefined) {
    return '∞';
  }
  const a = Math.abs(n);
  if (a < 1000) {
    return String(Math.round(n));
  }
  const units: [number, string][] = [
    [1e12, 'T'],
    [1e9, 'G'],
    [1e6, 'M'],
    [1e3, 'k']
  ];
  for (const [size, unit] of units) {
    if (a >= size) {
      const v = n / size;
      return (Math.abs(v) >= 100 ? String(Math.round(v)) : trimZero(v.toFixed(1))) + unit;
    }
  }
  return String(n);
}

/** Bytes in binary units: "512 B", "1.5 KiB", "16 GiB". */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !isFinite(n)) {
    return '?';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  if (i === 0) {
    return `${Math.round(v)} B`;
  }
  return `${Math.abs(v) >= 100 ? Math.round(v) : trimZero(v.toFixed(1))} ${units[i]}`;
}

/** A duration in seconds, to the two largest units: "0s", "42s", "3m 12s", "2h 5m", "3d 4h". */
export function formatDuration(seconds: number): string {
  let s = Math.max(0, Math.floor(seconds));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d > 0) {
    return h ? `${d}d ${h}h` : `${d}d`;
  }
  if (h > 0) {
    return m ? `${h}h ${m}m` : `${h}h`;
  }
  if (m > 0) {
    return s ? `${m}m ${s}s` : `${m}m`;
  }
  return `${s}s`;
}

/** How long ago an ISO time was, relative to `now` (ms since the epoch): "42s"; "" without a time. */
export function formatAge(iso: string | null | undefined, now: number): string {
  if (!iso) {
    return '';
  }
  const t = Date.parse(iso);
  if (isNaN(t)) {
    return '';
  }
  return formatDuration((now - t) / 1000);
}

/** Milliseconds for people: "0.8 ms", "42 ms", "1.3 s"; null (no sample) is "–". */
export function formatMs(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !isFinite(ms)) {
    return '–';
  }
  if (ms < 10) {
    return `${trimZero(ms.toFixed(1))} ms`;
  }
  if (ms < 1000) {
    return `${Math.round(ms)} ms`;
  }
  return `${trimZero((ms / 1000).toFixed(1))} s`;
}

/**
 * One latency as "p50 / p99" ("42 ms / 1.3 s"), or "" when there is nothing to show: an engine
 * without latency, or no generation yet.
 */
export function formatLatencyPair(p50: number | null, p99: number | null): string {
  if (p50 === null && p99 === null) {
    return '';
  }
  return `${formatMs(p50)} / ${formatMs(p99)}`;
}

/** The rows the panel shows for a latency report: [label, "p50 / p99"]; none without samples. */
export function latencyRows(l: ILatency | null): [string, string][] {
  if (!l || l.generations <= 0) {
    return [];
  }
  const rows: [string, string][] = [];
  const ttft = formatLatencyPair(l.ttftP50Ms, l.ttftP99Ms);
  const tbt = formatLatencyPair(l.tbtP50Ms, l.tbtP99Ms);
  if (ttft) {
    rows.push(['first token', ttft]);
  }
  if (tbt) {
    rows.push(['between tokens', tbt]);
  }
  return rows;
}

/** A quota value for people: null is "∞" (no limit), lists are joined, numbers are plain. */
export function formatQuotaValue(field: string, value: QuotaValue | undefined): string {
  if (value === undefined) {
    return '';
  }
  if (value === null) {
    return '∞';
  }
  if (Array.isArray(value)) {
    return value.join(', ');
  }
  if (typeof value === 'number') {
    if (field === 'max_run_seconds') {
      return `${value} s`;
    }
    if (field === 'memory_mb_per_run') {
      return `${value} MB`;
    }
    return formatCount(value);
  }
  return String(value);
}

/**
 * Where a tenant's quota comes from, in one line: the fields set by each source other than the
 * defaults ("user override: weight, kv_pages · group:students: tokens_per_minute"), or "defaults".
 */
export function quotaSourceSummary(source: { [field: string]: string } | null): string {
  if (!source) {
    return '';
  }
  const by: { [src: string]: string[] } = {};
  for (const field of QUOTA_FIELDS.concat(Object.keys(source).filter(f => QUOTA_FIELDS.indexOf(f) < 0))) {
    const src = source[field];
    if (src && src !== 'default') {
      (by[src] = by[src] || []).push(field);
    }
  }
  const parts = Object.keys(by)
    .sort((a, b) => (a === 'user' ? -1 : b === 'user' ? 1 : a < b ? -1 : 1))
    .map(src => `${quotaSourceLabel(src)}: ${by[src].join(', ')}`);
  return parts.length ? parts.join(' · ') : 'defaults';
}

/** A partial quota (a group's property, an override) in one line: "tokens_per_minute=5000, kv_pages=∞". */
export function formatQuotaFields(fields: { [field: string]: QuotaValue } | null): string {
  if (!fields) {
    return '';
  }
  const names = QUOTA_FIELDS.filter(f => f in fields).concat(Object.keys(fields).filter(f => QUOTA_FIELDS.indexOf(f) < 0));
  return names.map(f => `${f}=${formatQuotaValue(f, fields[f])}`).join(', ');
}

/** Where a quota value came from, as the panel says it: "default", "group:students", "user override". */
export function quotaSourceLabel(source: string | undefined): string {
  if (!source || source === 'default') {
    return 'default';
  }
  if (source === 'user') {
    return 'user override';
  }
  return source;
}

// ---------------------------------------------------------------- levels

/** How close `used` is to `limit`: null (no limit) is always ok; a zero limit with use is critical. */
export function usageLevel(
  used: number,
  limit: number | null | undefined,
  warnAt = WARN_AT,
  criticalAt = CRITICAL_AT
): Level {
  if (limit === null || limit === undefined) {
    return 'ok';
  }
  if (limit <= 0) {
    return used > 0 ? 'critical' : 'ok';
  }
  const ratio = used / limit;
  if (ratio >= criticalAt) {
    return 'critical';
  }
  if (ratio >= warnAt) {
    return 'warning';
  }
  return 'ok';
}

const LEVEL_ORDER: Level[] = ['ok', 'warning', 'critical', 'error'];

/** The most severe of several levels. */
export function worstLevel(levels: Level[]): Level {
  let worst: Level = 'ok';
  for (const l of levels) {
    if (LEVEL_ORDER.indexOf(l) > LEVEL_ORDER.indexOf(worst)) {
      worst = l;
    }
  }
  return worst;
}

function limitOf(me: IMe, field: string): number | null {
  const v = me.quota[field];
  return typeof v === 'number' ? v : null;
}

export interface IStatusSummary {
  text: string;
  level: Level;
  title: string;
}

/** A count the engine rounded down to `step` for non-admins: "<8" for 0, "8+" for 8; exact when step is 1. */
export function approx(value: number, step: number): string {
  if (step <= 1) {
    return String(value);
  }
  return value < step ? `<${step}` : `${value}+`;
}

/** What the status-bar item shows: my token rates and KV pages against my quota, and the engine's queue. */
export function statusSummary(me: IMe, status: IEngineStatus): IStatusSummary {
  const perMin = limitOf(me, 'tokens_per_minute');
  const perDay = limitOf(me, 'tokens_per_day');
  const pages = limitOf(me, 'kv_pages');
  const u = me.usage;
  const parts = [`Potluck ${formatCount(u.tokensLastMinute)}/${formatCount(perMin)} tok/min`];
  if (perDay !== null) {
    parts.push(`${formatCount(u.tokensToday)}/${formatCount(perDay)} tok/day`);
  }
  parts.push(`${formatCount(me.kvPages)}/${formatCount(pages)} pages`);
  parts.push(`queue ${approx(status.queueDepth, status.requestStep)}`);
  const level = worstLevel([
    usageLevel(u.tokensLastMinute, perMin),
    usageLevel(u.tokensToday, perDay),
    usageLevel(me.kvPages, pages)
  ]);
  const title = [
    `Potluck: ${status.model} on ${status.deviceName} (${status.profile}), as ${me.name}`,
    `tokens this minute: ${u.tokensLastMinute} of ${formatCount(perMin)} (${quotaSourceLabel(me.quotaSource.tokens_per_minute)})`,
    `tokens today: ${u.tokensToday} of ${formatCount(perDay)} (${quotaSourceLabel(me.quotaSource.tokens_per_day)})`,
    `KV pages held: ${me.kvPages} of ${formatCount(pages)} (${quotaSourceLabel(me.quotaSource.kv_pages)})`,
    `engine queue: ${approx(status.queueDepth, status.requestStep)}, active users: ` +
      approx(status.activeTenants, status.tenantStep),
    'Click to open the Potluck panel'
  ].join('\n');
  return { text: parts.join(' · '), level, title };
}

/** The status item when the engine cannot be reached (or refuses): one line, level error. */
export function errorSummary(message: string): IStatusSummary {
  return { text: 'Potluck: not connected', level: 'error', title: oneLine(message) };
}

// ---------------------------------------------------------------- runs

/** Whether a run in `state` has ended (`states`: the engine's, from its status). */
export function runEnded(state: string, states: IRunStates = DEFAULT_RUN_STATES): boolean {
  return states.done.indexOf(state) >= 0;
}

/** The text an event adds to a run's output: what it printed, its messages, and how it ended. */
export function eventText(event: unknown): string {
  const ev = obj(event);
  switch (ev.type) {
    case 'output':
      return str(ev.text);
    case 'message':
      return `[message] ${JSON.stringify(ev.body)}\n`;
    case 'status':
      if (ev.state === 'failed') {
        return `[failed] ${oneLine(str(ev.error, 'the run failed'))}\n`;
      }
      if (ev.state === 'cancelled') {
        return '[cancelled]\n';
      }
      return '';
    case 'error':
      return `[error] ${errorMessage(0, ev, 'error')}\n`;
    default:
      return '';
  }
}

/** Runs grouped by owner, counting the ones that have not ended (the admin tenants table). */
export function activeRunsByOwner(
  runs: IRun[],
  states: IRunStates = DEFAULT_RUN_STATES
): { [owner: string]: number } {
  const out: { [owner: string]: number } = {};
  for (const r of runs) {
    if (!runEnded(r.state, states)) {
      out[r.owner] = (out[r.owner] || 0) + 1;
    }
  }
  return out;
}

// ---------------------------------------------------------------- the admin's quota form

/**
 * One field of the quota form to the value the override stores: "" leaves the field out (it comes
 * from the defaults and groups), "none"/"unlimited"/"∞" is null (no limit), numbers are numbers.
 * Throws an Error with a one-line message for what the field cannot take.
 */
export function parseQuotaInput(field: string, text: string): QuotaValue | undefined {
  const t = text.trim();
  if (t === '') {
    return undefined;
  }
  if (field === 'priority') {
    if (t !== 'interactive' && t !== 'batch') {
      throw new Error(`priority must be "interactive" or "batch", not "${t}"`);
    }
    return t;
  }
  if (field === 'models') {
    return t
      .split(',')
      .map(s => s.trim())
      .filter(s => s);
  }
  if (['none', 'null', 'unlimited', '∞'].indexOf(t.toLowerCase()) >= 0) {
    if (field === 'weight') {
      throw new Error('weight must be a positive number');
    }
    return null;
  }
  const n = Number(t);
  if (!isFinite(n) || n < 0) {
    throw new Error(`${field} must be a non-negative number or "none" (no limit), not "${t}"`);
  }
  if (field === 'weight' || field === 'max_run_seconds') {
    if (n <= 0) {
      throw new Error(`${field} must be a positive number`);
    }
    return n;
  }
  if (!Number.isInteger(n)) {
    throw new Error(`${field} must be a whole number, not "${t}"`);
  }
  return n;
}

/** The form's text for a field of an existing override ("" when the override does not set it). */
export function quotaInputText(value: QuotaValue | undefined): string {
  if (value === undefined) {
    return '';
  }
  if (value === null) {
    return 'none';
  }
  if (Array.isArray(value)) {
    return value.join(', ');
  }
  return String(value);
}

/** The whole form (field -> text) to an override body; the errors of every field joined in one line. */
export function quotaOverrideFromForm(texts: { [field: string]: string }): {
  [field: string]: QuotaValue;
} {
  const out: { [field: string]: QuotaValue } = {};
  const errors: string[] = [];
  for (const field of Object.keys(texts)) {
    try {
      const v = parseQuotaInput(field, texts[field]);
      if (v !== undefined) {
        out[field] = v;
      }
    } catch (e) {
      errors.push((e as Error).message);
    }
  }
  if (errors.length) {
    throw new Error(errors.join('; '));
  }
  return out;
}
