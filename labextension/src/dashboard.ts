/**
 * The admin dashboard: every tenant and Hub group with quota, where it comes from and usage;
 * usage over time per user and per group (SVG line charts); each tenant's latency; per-user
 * quota overrides (edit, reset); everyone's runs with cancel; every engine of the hub, all pools
 * (`enginesection.ts`).
 *
 * Plain DOM in `node`, no JupyterLab imports: the lab shows it in a main-area widget (through
 * the server extension's proxy), and the engine serves it at its own base URL for hub admins in
 * a plain browser (`standalone.ts`). Whoever shows it calls `refresh()` (on a poll).
 * Group quotas are the Hub's (each group's `potluck` property): on the engine's page, an admin
 * whose token may write groups edits them through the Hub's API with that token (`hubGroups`);
 * elsewhere they are shown read-only, with where to edit them.
 */

import { chartFigure, drawChart } from './chart';
import { el, section, setText, syncRows, table, td } from './dom';
import { enginePageHref, IHubEngines, parseEngines } from './engines';
import { EnginesSection } from './enginesection';
import { canEditGroup } from './groupquota';
import {
  historyPath,
  historyRefreshMs,
  IRange,
  IUsageHistory,
  Metric,
  METRIC_LABELS,
  parseUsageHistory,
  RANGES,
  rangeOf,
  topSeries,
  total
} from './history';
import {
  DEFAULT_RUN_STATES,
  EDITABLE_QUOTA_FIELDS,
  failureText,
  formatAge,
  formatCompact,
  formatCount,
  formatLatencyPair,
  formatQuotaFields,
  formatQuotaValue,
  IRequester,
  IRun,
  IRunStates,
  ITenant,
  oneLine,
  parseRuns,
  parseStatus,
  parseTenants,
  parseWarnings,
  PotluckError,
  QUOTA_FIELDS,
  QuotaValue,
  quotaInputText,
  quotaSourceLabel,
  quotaSourceSummary,
  runEnded,
  usageLevel,
  worstLevel
} from './model';
import { quotaForm } from './quotaform';

/** Group quota edits through the Hub's API, with the admin's own token (the engine's page). */
export interface IHubGroups {
  /** The token's scopes: which groups it may write (`groups`, `groups!group=NAME`). */
  scopes(): Promise<string[]>;
  /** Replace the group's quota in its Hub properties, every other property kept. */
  setQuota(group: string, fields: { [field: string]: QuotaValue }): Promise<void>;
}

export interface IDashboardOptions {
  requester: IRequester;
  /** Where group quotas are edited (the Hub's admin page), when known. */
  hubAdminUrl?: string | null;
  /** The engine's own dashboard page, where group quotas can be edited (from the lab), when known. */
  enginePageUrl?: string | null;
  /** Group edits through the Hub (the engine's page under a Hub); none: groups are read-only here. */
  hubGroups?: IHubGroups | null;
  /** The Hub's `/services/` folder, under a Hub: each engine's name links to its own page there. */
  servicesUrl?: string | null;
}

export class Dashboard {
  constructor(readonly options: IDashboardOptions) {
    const node = (this.node = el('div', 'jp-PotluckDash'));
    const header = el('div', 'jp-PotluckDash-header');
    header.appendChild(el('h2', 'jp-Potluck-title', 'Potluck admin dashboard'));
    this._engine = el('span', 'jp-PotluckDash-engine');
    header.appendChild(this._engine);
    const controls = el('div', 'jp-PotluckDash-controls');
    this._range = el('select', 'jp-mod-styled jp-PotluckDash-range');
    this._range.title = 'Time range of the usage charts';
    for (const r of RANGES) {
      const o = el('option', undefined, r.label);
      o.value = r.key;
      this._range.appendChild(o);
    }
    this._metric = el('select', 'jp-mod-styled jp-PotluckDash-metric');
    this._metric.title = 'What the charts show per minute or hour';
    for (const m of Object.keys(METRIC_LABELS) as Metric[]) {
      const o = el('option', undefined, METRIC_LABELS[m]);
      o.value = m;
      this._metric.appendChild(o);
    }
    this._range.addEventListener('change', () => void this.refresh());
    this._metric.addEventListener('change', () => this._renderCharts());
    this._updated = el('span', 'jp-PotluckDash-updated');
    controls.append(this._range, this._metric, this._updated);
    header.appendChild(controls);
    node.appendChild(header);

    this._error = el('div', 'jp-Potluck-error jp-PotluckDash-error');
    this._error.setAttribute('role', 'alert');
    this._error.hidden = true;
    node.appendChild(this._error);
    this._warnings = el('ul', 'jp-PotluckDash-warnings');
    this._warnings.hidden = true;
    node.appendChild(this._warnings);
    this._notice = el('div', 'jp-PotluckDash-notice');
    this._notice.setAttribute('role', 'status');
    this._notice.hidden = true;
    node.appendChild(this._notice);

    this._engines = new EnginesSection(options.servicesUrl || null);
    node.appendChild(this._engines.node);

    const charts = section('jp-PotluckDash-charts', 'Usage over time');
    const row = el('div', 'jp-PotluckDash-chartRow');
    this._userChart = chartFigure('users', 'per user');
    this._groupChart = chartFigure('groups', 'per group');
    row.append(this._userChart, this._groupChart);
    charts.appendChild(row);
    node.appendChild(charts);

    const users = section('jp-PotluckDash-usersSection', 'Users');
    this._users = table('jp-PotluckDash-users', ['user', 'groups', 'tokens / min', 'tokens today', 'in range',
      'all time', 'KV pages', 'runs', 'first token p50 / p99', 'between tokens p50 / p99', 'quota from', '']);
    users.appendChild(this._users);
    this._formHost = el('div', 'jp-Potluck-formHost');
    users.appendChild(this._formHost);
    node.appendChild(users);

    const groups = section('jp-PotluckDash-groupsSection', 'Groups');
    this._groups = table('jp-PotluckDash-groups', ['group', 'members', 'quota (potluck property)', 'tokens in range',
      'status', '']);
    this._groupsEmpty = el('p', 'jp-Potluck-empty', 'No Hub groups seen.');
    this._groupFormHost = el('div', 'jp-Potluck-formHost');
    groups.append(this._groups, this._groupsEmpty, this._groupFormHost);
    this._groupNote = el('p', 'jp-Potluck-hint jp-PotluckDash-groupNote');
    groups.appendChild(this._groupNote);
    this._renderGroupNote();
    node.appendChild(groups);

    const runs = section('jp-PotluckDash-runsSection', 'Runs of everyone');
    this._runs = table('jp-PotluckDash-runs', ['user', 'run', 'kind', 'state', 'tokens', 'fuel', 'age', '']);
    this._runsEmpty = el('p', 'jp-Potluck-empty', 'No inferlet runs.');
    runs.append(this._runs, this._runsEmpty);
    node.appendChild(runs);
  }

  readonly node: HTMLElement;

  /** Fetch everything and draw it (never throws: a failure is shown in the error line). */
  async refresh(): Promise<void> {
    const req = this.options.requester;
    const range = rangeOf(this._range.value);
    const errors: string[] = [];
    const get = async <T>(path: string, parse: (b: unknown) => T): Promise<T | null> => {
      try {
        return parse(await req.request(path));
      } catch (e) {
        errors.push(failureText(e));
        return null;
      }
    };
    if (this.options.hubGroups && !this._scopesRead) {
      this._scopesRead = true;
      try {
        this._hubScopes = await this.options.hubGroups.scopes();
      } catch (e) {
        this._hubScopes = [];
        errors.push(`cannot read your Hub scopes, group quotas are read-only: ${failureText(e)}`);
      }
      this._renderGroupNote();
    }
    // The history again only when the range changed or it is due (long ranges are big answers).
    const due = !this._history || this._historyRange !== range ||
      Date.now() - this._historyAt >= historyRefreshMs(range);
    // An engine older than the hub's list answers 404: no section, no error.
    const engines = req.request('admin/engines').then(parseEngines, (e): IHubEngines | null | undefined => {
      if (e instanceof PotluckError && e.status === 404) {
        return null;
      }
      errors.push(failureText(e));
      return undefined;
    });
    const [status, report, runs, history, hub] = await Promise.all([
      get('status', parseStatus),
      get('admin/tenants', b => ({ tenants: parseTenants(b), warnings: parseWarnings(b) })),
      get('admin/runs', parseRuns),
      due ? get(historyPath(range, Date.now()), b => parseUsageHistory(b)) : Promise.resolve(null),
      engines
    ]);
    if (hub !== undefined) {
      this._renderEngines(hub);
    }
    if (status) {
      this._runStates = status.runStates;
      setText(this._engine, `${status.model} on ${status.deviceName} · queue ${status.queueDepth} · ` +
        `${status.runningGenerations} generating · ${status.activeTenants} active users`);
    }
    if (history) {
      this._history = history;
      this._historyRange = range;
      this._historyAt = Date.now();
    }
    if (report) {
      this._tenants = report.tenants;
      this._renderWarnings(report.warnings);
    }
    this._renderCharts();
    this._renderUsers(runs);
    this._renderGroups();
    if (runs) {
      this._renderRuns(runs);
    }
    this._fetchError = errors.length ? errors[0] : null;
    this._renderError();
    if (!errors.length) {
      setText(this._updated, `updated ${new Date().toLocaleTimeString()}`);
    }
  }

  dispose(): void {
    this.node.remove();
  }

  /** The hub's engines; under a Hub, this engine's own page is the one named there (pools: not `potluck`). */
  private _renderEngines(hub: IHubEngines | null): void {
    this._engines.update(hub);
    const page = hub && hub.thisEngine ? enginePageHref(this.options.servicesUrl, hub.thisEngine) : null;
    if (page && page !== this._enginePageUrl) {
      this._enginePageUrl = page;
      this._renderGroupNote();
    }
  }

  // ------------------------------------------------------------ charts

  private _renderCharts(): void {
    const h = this._history;
    if (!h) {
      return;
    }
    const metric = this._metric.value as Metric;
    const per = h.resolution === 'hour' ? 'hour' : 'minute';
    const groups: { [name: string]: IUsageHistory['users'][string] } = {};
    for (const g of Object.keys(h.groups)) {
      groups[g] = h.groups[g].points;
    }
    drawChart(this._userChart, topSeries(h.users, h, metric), h, `${METRIC_LABELS[metric]} per ${per}, per user`,
      'No usage in this range.');
    drawChart(this._groupChart, topSeries(groups, h, metric), h, `${METRIC_LABELS[metric]} per ${per}, per group`,
      Object.keys(h.groups).length ? 'No group usage in this range.'
        : 'No Hub groups seen (a standalone engine has none; under a Hub, members appear once they use the engine).');
  }

  // ------------------------------------------------------------ users

  private _renderUsers(runs: IRun[] | null): void {
    const h = this._history;
    const active: { [owner: string]: number } = {};
    for (const r of runs || []) {
      if (!runEnded(r.state, this._runStates)) {
        active[r.owner] = (active[r.owner] || 0) + 1;
      }
    }
    syncRows(this._users.tBodies[0], this._tenants, 'data-tenant', t => t.name, t => {
      const tr = el('tr');
      for (const cls of ['Name', 'Groups', 'Minute', 'Day', 'Range', 'Total', 'Pages', 'Runs', 'Ttft', 'Tbt', 'Source', 'Actions']) {
        tr.appendChild(td(`jp-PotluckDash-tenant${cls}`));
      }
      const b = el('button', 'jp-Button jp-mod-styled jp-mod-accept jp-Potluck-button jp-Potluck-editQuota', 'Edit');
      b.title = `Set ${t.name}'s quota override`;
      b.addEventListener('click', () => this._openQuotaForm(t.name));
      tr.cells[11].appendChild(b);
      return tr;
    }, (tr, t) => {
      const q = t.quota || {};
      const lim = (f: string) => (typeof q[f] === 'number' ? (q[f] as number) : null);
      const u = t.usage;
      const c = tr.cells;
      setText(c[0], `${t.name}${t.override ? ' *' : ''}`);
      c[0].title = [t.override ? `user override: ${formatQuotaFields(t.override)}` : 'no user override',
        t.live ? '' : 'not seen since the engine started'].filter(x => x).join('\n');
      setText(c[1], t.groups.filter(g => !g.startsWith('scope:')).join(', '));
      setText(c[2], u ? `${u.tokensLastMinute} / ${formatCount(lim('tokens_per_minute'))}` : '–');
      setText(c[3], u ? `${u.tokensToday} / ${formatCount(lim('tokens_per_day'))}` : '–');
      setText(c[4], h ? formatCompact(total(h.users[t.name] || [], 'tokens')) : '');
      c[4].title = this._historyRange ? `tokens in the ${this._historyRange.label}` : '';
      setText(c[5], t.totalTokens === null ? '' : formatCompact(t.totalTokens));
      setText(c[6], t.quota ? `${t.kvPages} / ${formatCount(lim('kv_pages'))}` : '–');
      const n = runs ? active[t.name] || 0 : u ? u.activeRuns : 0;
      setText(c[7], `${n} / ${formatCount(lim('max_runs'))}`);
      const l = t.latency && t.latency.generations > 0 ? t.latency : null;
      setText(c[8], l ? formatLatencyPair(l.ttftP50Ms, l.ttftP99Ms) : '');
      setText(c[9], l ? formatLatencyPair(l.tbtP50Ms, l.tbtP99Ms) : '');
      c[8].title = c[9].title = l ? `over ${t.name}'s last ${l.generations} generations` : '';
      setText(c[10], t.quotaSource ? quotaSourceSummary(t.quotaSource) : 'not seen since the engine started');
      tr.dataset.level = u
        ? worstLevel([usageLevel(u.tokensLastMinute, lim('tokens_per_minute')),
          usageLevel(u.tokensToday, lim('tokens_per_day')), usageLevel(t.kvPages, lim('kv_pages'))])
        : 'ok';
    });
  }

  /** The quota override form for one user: a field per quota value, blank = from defaults and groups. */
  private _openQuotaForm(name: string): void {
    const host = this._formHost;
    const t = this._tenants.find(x => x.name === name);
    const path = `admin/quotas/users/${encodeURIComponent(name)}`;
    // The engine's newer numeric fields too (its quota may have more than this frontend knows).
    const extra = Object.keys(t?.quota || {}).filter(f => QUOTA_FIELDS.indexOf(f) < 0 && !Array.isArray(t!.quota![f]));
    const form = quotaForm({
      cls: '',
      data: { tenant: name },
      title: `Quota override for ${name}`,
      hint: 'Blank: the value comes from the defaults and groups. "none": no limit. Saving replaces the whole override.',
      fields: EDITABLE_QUOTA_FIELDS.concat(['models'], extra),
      value: f => quotaInputText(t?.override?.[f]),
      placeholder: f => {
        const eff = t?.quota?.[f];
        return eff === undefined ? '' : `${formatQuotaValue(f, eff)} (${quotaSourceLabel(t?.quotaSource?.[f])})`;
      },
      idPrefix: 'potluck-dash-quota',
      saveLabel: 'Save',
      saveCls: 'jp-Potluck-saveQuota',
      save: async body => {
        await this.options.requester.request(path, 'PUT', body);
        host.textContent = '';
      },
      reset: {
        title: 'Remove the override: every value from the defaults and groups again',
        action: async () => {
          try {
            await this.options.requester.request(path, 'DELETE');
          } catch (e) {
            if (!(e instanceof PotluckError && e.status === 404)) {
              throw e;
            }
          }
          host.textContent = '';
        }
      },
      act: (b, action) => this._act(b, action),
      close: () => (host.textContent = '')
    });
    host.textContent = '';
    host.appendChild(form);
    form.scrollIntoView({ block: 'nearest' });
    (form.querySelector('input') as HTMLInputElement).focus();
  }

  // ------------------------------------------------------------ groups

  private _renderGroups(): void {
    const h = this._history;
    const names = h ? Object.keys(h.groups).sort() : [];
    syncRows(this._groups.tBodies[0], names, 'data-group', g => g, () => {
      const tr = el('tr');
      for (const cls of ['Name', 'Members', 'Quota', 'Range', 'Status', 'Actions']) {
        tr.appendChild(td(`jp-PotluckDash-group${cls}`));
      }
      return tr;
    }, (tr, name) => {
      const editable = canEditGroup(this._hubScopes, name);
      let edit = tr.cells[5].querySelector('button');
      if (!editable) {
        edit?.remove();
      } else if (!edit) {
        const b = el('button', 'jp-Button jp-mod-styled jp-mod-accept jp-Potluck-button jp-PotluckDash-editGroup', 'Edit');
        b.title = `Set group ${name}'s quota in the Hub (with your own rights)`;
        b.addEventListener('click', () => this._openGroupForm(name));
        tr.cells[5].appendChild(b);
      }
      const g = h!.groups[name];
      const c = tr.cells;
      setText(c[0], name);
      setText(c[1], g.members.join(', '));
      setText(c[2], g.quota && Object.keys(g.quota).length ? formatQuotaFields(g.quota) : 'none (defaults)');
      setText(c[3], formatCompact(total(g.points, 'tokens')));
      const status = g.error ? [`unreadable, last good quota kept: ${oneLine(g.error)}`] : [];
      setText(c[4], status.concat(g.warnings).join(' · ') || 'ok');
      tr.dataset.level = g.error ? 'critical' : g.warnings.length ? 'warning' : 'ok';
    });
    this._groupsEmpty.hidden = names.length > 0 || !h;
    this._groups.hidden = names.length === 0;
  }

  /** What the engine flags to admins about the quotas (e.g. kv_pages above its KV pool). */
  private _renderWarnings(warnings: string[]): void {
    this._warnings.hidden = warnings.length === 0;
    if (this._warnings.textContent !== warnings.join('')) {
      this._warnings.textContent = '';
      for (const w of warnings) {
        this._warnings.appendChild(el('li', 'jp-PotluckDash-warning', w));
      }
    }
  }

  private _renderGroupNote(): void {
    const note = this._groupNote;
    note.textContent = '';
    const editable = this._hubScopes.some(s => s === 'groups' || s.startsWith('groups!group='));
    note.append(editable
      ? "A group's quota is its potluck property in the Hub: Edit writes it there with your own Hub rights " +
        '(one flat key per field, potluck.tokens_per_minute = 5000; other properties are kept). Members get it at ' +
        'their next request (the engine rereads a group within about 20 s). '
      : "Group quotas are each Hub group's potluck property: read-only here. Edit them in the Hub's admin page " +
        '(Admin → Groups → the group → properties, one flat key per field: potluck.tokens_per_minute = 5000)' +
        (this._enginePageUrl ? ' or on the engine\'s dashboard page' : '') + '. ');
    note.append('Members are the users the engine has seen since it started.');
    const links: [string, string][] = [];
    if (this.options.hubAdminUrl) {
      links.push(['Open the Hub admin page', this.options.hubAdminUrl]);
    }
    if (this._enginePageUrl && !editable) {
      links.push(["Open the engine's dashboard page", this._enginePageUrl]);
    }
    for (const [text, href] of links) {
      const a = el('a', 'jp-PotluckDash-hubLink', text);
      a.href = href;
      a.target = '_blank';
      a.rel = 'noopener';
      note.append(' ', a);
    }
  }

  /** A group's quota form: blank = the group does not set the field (defaults or other groups decide). */
  private _openGroupForm(name: string): void {
    const host = this._groupFormHost;
    const g = this._history?.groups[name];
    const form = quotaForm({
      cls: 'jp-PotluckDash-groupForm',
      data: { group: name },
      title: `Quota of group ${name} (in the Hub)`,
      hint: 'Blank: this group does not set the field. "none": no limit. Saving replaces the group\'s whole quota; ' +
        'its other properties are kept.',
      fields: EDITABLE_QUOTA_FIELDS.concat(['models']),
      value: f => quotaInputText(g?.quota?.[f] as QuotaValue | undefined),
      placeholder: () => 'not set by this group',
      idPrefix: 'potluck-dash-group',
      saveLabel: 'Save in the Hub',
      saveCls: 'jp-PotluckDash-saveGroup',
      save: async body => {
        await this.options.hubGroups!.setQuota(name, body);
        host.textContent = '';
        this._groupSaved = `Saved the quota of group ${name} in the Hub; members get it at their next request.`;
      },
      act: (b, action) => this._act(b, action),
      close: () => (host.textContent = '')
    });
    host.textContent = '';
    host.appendChild(form);
    form.scrollIntoView({ block: 'nearest' });
  }

  // ------------------------------------------------------------ runs

  private _renderRuns(runs: IRun[]): void {
    const now = Date.now();
    syncRows(this._runs.tBodies[0], runs, 'data-admin-run', r => `${r.owner}/${r.id}`, r => {
      const tr = el('tr');
      tr.dataset.owner = r.owner;
      for (const cls of ['User', 'Id', 'Kind', 'State', 'Tokens', 'Fuel', 'Age', 'Actions']) {
        tr.appendChild(td(`jp-PotluckDash-run${cls}`));
      }
      return tr;
    }, (tr, r) => {
      const c = tr.cells;
      setText(c[0], r.owner);
      setText(c[1], r.id);
      c[1].title = r.id;
      setText(c[2], r.kind);
      setText(c[3], r.state);
      c[3].title = r.error || '';
      tr.dataset.state = r.state;
      setText(c[4], formatCompact(r.tokens));
      setText(c[5], formatCompact(r.fuel));
      setText(c[6], formatAge(r.created, now));
      let button = c[7].querySelector('button') as HTMLButtonElement | null;
      if (runEnded(r.state, this._runStates)) {
        button?.remove();
      } else if (!button) {
        const b = (button = el('button', 'jp-Button jp-mod-styled jp-mod-warn jp-Potluck-button jp-Potluck-adminCancel', 'Cancel'));
        b.title = `Cancel ${r.owner}'s run ${r.id}`;
        b.addEventListener('click', () => void this._act(b, () => this.options.requester.request(
          `admin/runs/${encodeURIComponent(r.owner)}/${encodeURIComponent(r.id)}`, 'DELETE')));
        c[7].appendChild(b);
      }
    });
    this._runsEmpty.hidden = runs.length > 0;
  }

  // ------------------------------------------------------------ actions and errors

  /** Run an action (save, reset, cancel); show its error, refresh right after. */
  private async _act(button: HTMLButtonElement, action: () => Promise<unknown>): Promise<void> {
    button.disabled = true;
    try {
      await action();
      this._actionError = null;
    } catch (e) {
      this._actionError = failureText(e);
    } finally {
      button.disabled = false;
    }
    this._renderError();
    await this.refresh();
  }

  private _renderError(): void {
    const msg = this._actionError || this._fetchError;
    this._error.hidden = !msg;
    setText(this._error, msg ? oneLine(msg) : '');
    this._notice.hidden = !this._groupSaved;
    setText(this._notice, this._groupSaved || '');
  }

  private _engine: HTMLElement;
  private _engines: EnginesSection;
  private _enginePageUrl: string | null = this.options.enginePageUrl || null;
  private _range: HTMLSelectElement;
  private _metric: HTMLSelectElement;
  private _updated: HTMLElement;
  private _error: HTMLElement;
  private _userChart: HTMLElement;
  private _groupChart: HTMLElement;
  private _users: HTMLTableElement;
  private _formHost: HTMLElement;
  private _groups: HTMLTableElement;
  private _groupsEmpty: HTMLElement;
  private _groupFormHost: HTMLElement;
  private _groupNote: HTMLElement;
  private _notice: HTMLElement;
  private _warnings: HTMLElement;
  private _hubScopes: string[] = [];
  private _scopesRead = false;
  private _groupSaved: string | null = null;
  private _runs: HTMLTableElement;
  private _runsEmpty: HTMLElement;
  private _tenants: ITenant[] = [];
  private _history: IUsageHistory | null = null;
  private _historyRange: IRange | null = null;
  private _historyAt = 0;
  private _runStates: IRunStates = DEFAULT_RUN_STATES;
  private _fetchError: string | null = null;
  private _actionError: string | null = null;
}
