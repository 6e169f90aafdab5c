/**
 * The "Potluck" side panel: the engine, my quota (and where each value comes from), my runs
 * with their live output and a cancel button, my saved contexts, my recent latency; for engine
 * admins a button that opens the admin dashboard (a main-area view: a sidebar is too narrow
 * for every user's tables and charts). When the engine cannot be reached it says so, with the
 * reason, instead of "no runs" and "no saved contexts".
 *
 * Plain DOM, updated in place (rows are keyed by run id and context name), so a refresh
 * never throws away a button under the pointer.
 */

import { LabIcon } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { el, section, setText, syncRows, table, td } from './dom';
import {
  approx,
  eventText,
  failureText,
  formatAge,
  formatBytes,
  formatCompact,
  formatQuotaValue,
  IMe,
  IRun,
  ISavedContext,
  latencyRows,
  Level,
  oneLine,
  parseContexts,
  parseRuns,
  QUOTA_FIELDS,
  QUOTA_LABELS,
  quotaSourceLabel,
  runEnded,
  usageLevel
} from './model';
import { PANEL_INTERVAL, PotluckState } from './state';

/** Runs shown (newest first) and followed live; output kept per run (characters). */
const MAX_RUNS_SHOWN = 20;
const MAX_OUTPUT_CHARS = 64 * 1024;

/** Live output of one run, from its events WebSocket (past events replayed, then live ones). */
interface IStream {
  socket: WebSocket | null;
  text: string;
  ended: boolean;
  openedAt: number;
}

const USED: { [field: string]: (me: IMe) => number } = {
  tokens_per_minute: me => me.usage.tokensLastMinute,
  tokens_per_day: me => me.usage.tokensToday,
  kv_pages: me => me.kvPages,
  max_runs: me => me.usage.activeRuns,
  max_concurrent_requests: me => me.usage.activeRequests
};

export class PotluckPanel extends Widget {
  constructor(
    readonly state: PotluckState,
    icon?: LabIcon,
    readonly openDashboard: (() => void) | null = null
  ) {
    super();
    this.id = 'potluck-panel';
    this.addClass('jp-PotluckPanel');
    this.title.caption = 'Potluck';
    if (icon) {
      this.title.icon = icon;
    } else {
      this.title.label = 'Potluck';
    }
    this.node.tabIndex = -1;

    const header = el('div', 'jp-Potluck-header');
    header.appendChild(el('h2', 'jp-Potluck-title', 'Potluck'));
    this._who = el('span', 'jp-Potluck-who');
    header.appendChild(this._who);
    this.node.appendChild(header);

    this._error = el('div', 'jp-Potluck-error');
    this._error.setAttribute('role', 'alert');
    this._error.hidden = true;
    this.node.appendChild(this._error);

    this._engine = section('jp-Potluck-engine', 'Engine');
    this._engineBody = el('dl', 'jp-Potluck-engineInfo');
    this._engine.appendChild(this._engineBody);
    this.node.appendChild(this._engine);

    const quota = section('jp-Potluck-quotaSection', 'My quota');
    // Where each value comes from sits under its name: four columns do not fit a sidebar.
    this._quota = table('jp-Potluck-quota', ['limit (from)', 'value', 'used']);
    quota.appendChild(this._quota);
    this.node.appendChild(quota);

    // Hidden until the engine reports a latency with samples (older engines send none).
    this._latency = section('jp-Potluck-latencySection', 'My latency (p50 / p99)');
    this._latencyBody = el('dl', 'jp-Potluck-latency');
    this._latency.appendChild(this._latencyBody);
    this._latency.hidden = true;
    this.node.appendChild(this._latency);

    const runs = section('jp-Potluck-runsSection', 'My runs');
    this._runs = table('jp-Potluck-runs', ['run', 'state', 'tokens', 'fuel', 'age', '']);
    this._runsEmpty = el('p', 'jp-Potluck-empty', 'No inferlet runs yet: start one with %%inferlet in a notebook.');
    this._runsEmpty.hidden = true;       // until the engine has answered: no "No runs" before we know
    runs.appendChild(this._runs);
    runs.appendChild(this._runsEmpty);
    this.node.appendChild(runs);

    const contexts = section('jp-Potluck-contextsSection', 'My saved contexts');
    this._contexts = table('jp-Potluck-contexts', ['name', 'tokens', '']);
    this._contextsEmpty = el('p', 'jp-Potluck-empty', 'No saved contexts.');
    this._contextsEmpty.hidden = true;
    contexts.appendChild(this._contexts);
    contexts.appendChild(this._contextsEmpty);
    this.node.appendChild(contexts);

    this._poll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: PANEL_INTERVAL, backoff: false },
      standby: () => !this.isVisible || 'when-hidden',
      name: 'potluck:panel'
    });
    state.changed.connect(this._renderSummary, this);
  }

  /** Fetch everything the panel shows now (also after a cancel or delete). */
  async refresh(): Promise<void> {
    await this.state.refreshSummary();
    const errors: string[] = [];
    const get = async <T>(path: string, parse: (b: unknown) => T): Promise<T | null> => {
      try {
        return parse(await this.state.api.request(path));
      } catch (e) {
        errors.push(failureText(e));
        return null;
      }
    };
    const [runs, contexts] = await Promise.all([get('runs', parseRuns), get('contexts', parseContexts)]);
    this._unknown(this._runsEmpty, runs === null, 'My runs');
    this._unknown(this._contextsEmpty, contexts === null, 'My saved contexts');
    if (runs) {
      this._renderRuns(runs);
    }
    if (contexts) {
      this._renderContexts(contexts);
    }
    this._renderAdmin(!!this.state.me && this.state.me.isAdmin);
    this._fetchError = errors.length ? errors[0] : null;
    this._renderError();
  }

  /**
   * A list that could not be fetched says so instead of "No ...": its rows are the last ones
   * seen (greyed), and the reason is in the error line at the top.
   */
  private _unknown(empty: HTMLElement, unknown: boolean, what: string): void {
    if (!empty.dataset.emptyText) {
      empty.dataset.emptyText = empty.textContent || '';
    }
    const list = empty.previousElementSibling as HTMLElement | null;
    list?.classList.toggle('jp-Potluck-stale', unknown);
    empty.classList.toggle('jp-Potluck-unknown', unknown);
    if (unknown) {
      const reason = this.state.error || '';
      setText(empty, `${what}: unknown, ${reason.startsWith('engine unreachable') ? 'the engine is unreachable' : 'it could not be read (see above)'}.`);
      empty.hidden = false;
    } else {
      setText(empty, empty.dataset.emptyText);
    }
  }

  protected onAfterShow(): void {
    void this._poll.refresh();
  }

  protected onActivateRequest(): void {
    this.node.focus();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    for (const s of this._streams.values()) {
      s.socket?.close();
    }
    this._streams.clear();
    this.state.changed.disconnect(this._renderSummary, this);
    super.dispose();
  }

  // ------------------------------------------------------------ summary: engine and my quota

  private _renderSummary(): void {
    const { status, me } = this.state;
    if (this.state.error && this.state.error.startsWith('engine unreachable')) {
      // Never "No runs" next to "engine unreachable": the lists are unknown until it answers.
      this._unknown(this._runsEmpty, true, 'My runs');
      this._unknown(this._contextsEmpty, true, 'My saved contexts');
    }
    if (status) {
      const rows: [string, string][] = [
        ['model', status.model],
        ['device', `${status.deviceName} (${status.deviceKind}${status.deviceMemoryBytes ? ', ' + formatBytes(status.deviceMemoryBytes) : ''})`],
        ['profile', `${status.profile}${status.dtype ? ' (' + status.dtype + ')' : ''}`],
        ['KV pages', `${status.freePages} free of ${status.totalPages} × ${status.pageSize} tokens`],
        ['load', `queue ${approx(status.queueDepth, status.requestStep)} · ` +
          `${approx(status.runningGenerations, status.requestStep)} generating · ` +
          `${approx(status.activeTenants, status.tenantStep)} active users`],
        ['version', status.version]
      ];
      const dl = this._engineBody;
      dl.textContent = '';
      for (const [k, v] of rows) {
        const dt = el('dt', undefined, k);
        const dd = el('dd', `jp-Potluck-engine-${k.replace(/\s/g, '')}`, v);
        dl.appendChild(dt);
        dl.appendChild(dd);
      }
    }
    if (me) {
      const groups = me.groups.length ? ` · groups: ${me.groups.join(', ')}` : '';
      setText(this._who, `${me.name}${groups}${me.isAdmin ? ' · admin' : ''}`);
      const fields = QUOTA_FIELDS.filter(f => f in me.quota).concat(
        Object.keys(me.quota).filter(f => QUOTA_FIELDS.indexOf(f) < 0)
      );
      syncRows(
        this._quota.tBodies[0],
        fields,
        'data-field',
        f => f,
        () => {
          const tr = el('tr');
          const field = td('jp-Potluck-quotaField');
          field.append(el('span', 'jp-Potluck-quotaLabel'), el('span', 'jp-Potluck-quotaSource'));
          tr.append(field, td('jp-Potluck-quotaValue'), td('jp-Potluck-quotaUsed'));
          return tr;
        },
        (tr, f) => {
          const value = me.quota[f];
          const [label, source] = Array.from(tr.cells[0].children) as HTMLElement[];
          setText(label, QUOTA_LABELS[f] || f);
          tr.cells[0].title = f;
          setText(source, quotaSourceLabel(me.quotaSource[f]));
          setText(tr.cells[1], formatQuotaValue(f, value));
          const used = USED[f] ? USED[f](me) : null;
          setText(tr.cells[2], used === null ? '' : String(used));
          const level: Level = used === null ? 'ok' : usageLevel(used, typeof value === 'number' ? value : null);
          tr.dataset.level = level;
        }
      );
      this._renderMyLatency(me.latency);
    }
    this._renderError();
  }

  /** My time to first token and between tokens, over my recent generations; nothing without samples. */
  private _renderMyLatency(latency: IMe['latency']): void {
    const rows = latencyRows(latency);
    this._latency.hidden = rows.length === 0;
    const dl = this._latencyBody;
    dl.textContent = '';
    for (const [k, v] of rows) {
      dl.append(el('dt', undefined, k), el('dd', `jp-Potluck-latency-${k.replace(/\s/g, '')}`, v));
    }
    this._latency.title = latency && rows.length
      ? `over your last ${latency.generations} generations since the engine started (queue included)`
      : '';
  }

  private _renderError(): void {
    const msg = this.state.error || this._actionError || this._fetchError;
    this._error.hidden = !msg;
    setText(this._error, msg ? oneLine(msg) : '');
  }

  /** Run an action (cancel, delete, save); show its error, refresh right after. */
  private async _act(button: HTMLButtonElement | null, action: () => Promise<unknown>): Promise<void> {
    if (button) {
      button.disabled = true;
    }
    try {
      await action();
      this._actionError = null;
    } catch (e) {
      this._actionError = failureText(e);
    } finally {
      if (button) {
        button.disabled = false;
      }
    }
    this._renderError();
    await this._poll.refresh();
  }

  // ------------------------------------------------------------ my runs, live output

  private _renderRuns(runs: IRun[]): void {
    const shown = runs.slice(0, MAX_RUNS_SHOWN);
    const now = Date.now();
    for (const r of shown) {
      this._follow(r);
    }
    for (const [id, s] of this._streams) {
      if (!shown.some(r => r.id === id)) {
        s.socket?.close();
        this._streams.delete(id);
      }
    }
    syncRows(
      this._runs.tBodies[0],
      shown,
      'data-run-id',
      r => r.id,
      r => {
        const tr = el('tr', 'jp-Potluck-runRow');
        tr.append(td('jp-Potluck-runId'), td('jp-Potluck-runState'), td('jp-Potluck-runTokens'),
          td('jp-Potluck-runFuel'), td('jp-Potluck-runAge'), td('jp-Potluck-runActions'));
        const outCell = td('jp-Potluck-runOutputCell');
        const pre = el('pre', 'jp-Potluck-runOutput');
        pre.dataset.runId = r.id;
        outCell.appendChild(pre);
        tr.appendChild(outCell);
        return tr;
      },
      (tr, r) => {
        setText(tr.cells[0], r.id);
        tr.cells[0].title = `${r.kind} run ${r.id}${r.error ? ': ' + r.error : ''}`;
        setText(tr.cells[1], r.state);
        tr.dataset.state = r.state;
        tr.cells[1].title = r.error || '';
        setText(tr.cells[2], `${formatCompact(r.tokens)} tok`);
        setText(tr.cells[3], `${formatCompact(r.fuel)} fuel`);
        setText(tr.cells[4], r.created ? `${formatAge(r.created, now)} ago` : '');
        this._cancelButton(tr.cells[5], !runEnded(r.state, this.state.runStates), 'jp-Potluck-cancel', `Cancel run ${r.id}`,
          () => this.state.api.request(`runs/${encodeURIComponent(r.id)}`, 'DELETE'));
        const pre = tr.cells[6].firstElementChild as HTMLPreElement;
        const stream = this._streams.get(r.id);
        let text = stream ? stream.text : '';
        if (!text && r.error) {
          text = `[${r.state}] ${r.error}\n`;
        }
        setText(pre, text);
        pre.hidden = !text;
      }
    );
    this._runsEmpty.hidden = shown.length > 0;
  }

  /** A cancel button in `cell` while `show`; none once the run has ended. */
  private _cancelButton(cell: HTMLTableCellElement, show: boolean, cls: string, title: string,
    action: () => Promise<unknown>): void {
    let button = cell.querySelector('button') as HTMLButtonElement | null;
    if (!show) {
      button?.remove();
      return;
    }
    if (!button) {
      button = el('button', `jp-Button jp-mod-styled jp-mod-warn jp-Potluck-button ${cls}`, 'Cancel');
      button.title = title;
      const b = button;
      button.addEventListener('click', () => void this._act(b, action));
      cell.appendChild(button);
    }
  }

  /** Follow a run's events on its WebSocket (once; again if it dropped before the run ended). */
  private _follow(run: IRun): void {
    let s = this._streams.get(run.id);
    if (s && (s.socket || s.ended)) {
      return;
    }
    if (s && Date.now() - s.openedAt < 5000) {
      return;          // dropped a moment ago: try again on a later refresh
    }
    const stream: IStream = s || { socket: null, text: '', ended: false, openedAt: 0 };
    stream.openedAt = Date.now();
    stream.text = '';     // the socket replays every event from the start
    let socket: WebSocket;
    try {
      socket = this.state.api.runEvents(run.id);
    } catch {
      this._streams.set(run.id, stream);
      return;
    }
    stream.socket = socket;
    this._streams.set(run.id, stream);
    socket.onmessage = (msg: MessageEvent) => {
      let ev: any;
      try {
        ev = JSON.parse(String(msg.data));
      } catch {
        return;
      }
      const add = eventText(ev);
      if (add) {
        stream.text = (stream.text + add).slice(-MAX_OUTPUT_CHARS);
        const pre = this._runs.querySelector(`pre.jp-Potluck-runOutput[data-run-id="${CSS.escape(run.id)}"]`) as HTMLPreElement | null;
        if (pre) {
          pre.textContent = stream.text;
          pre.hidden = false;
          pre.scrollTop = pre.scrollHeight;
        }
      }
      if (ev && ev.type === 'status' && runEnded(String(ev.state), this.state.runStates)) {
        stream.ended = true;
        if (!runEnded(run.state, this.state.runStates)) {
          void this._poll.refresh();      // show the final state now, not at the next tick
        }
      }
    };
    socket.onclose = () => {
      stream.socket = null;
    };
  }

  // ------------------------------------------------------------ my saved contexts

  private _renderContexts(contexts: ISavedContext[]): void {
    syncRows(
      this._contexts.tBodies[0],
      contexts,
      'data-context',
      c => c.name,
      c => {
        const tr = el('tr');
        tr.append(td('jp-Potluck-contextName'), td('jp-Potluck-contextTokens'), td('jp-Potluck-contextActions'));
        const b = el('button', 'jp-Button jp-mod-styled jp-mod-warn jp-Potluck-button jp-Potluck-delete', 'Delete');
        b.title = `Delete the saved context "${c.name}"`;
        b.addEventListener('click', () =>
          void this._act(b, () => this.state.api.request(`contexts/${encodeURIComponent(c.name)}`, 'DELETE')));
        tr.cells[2].appendChild(b);
        return tr;
      },
      (tr, c) => {
        setText(tr.cells[0], c.name);
        setText(tr.cells[1], formatCompact(c.nTokens));
      }
    );
    this._contextsEmpty.hidden = contexts.length > 0;
  }

  // ------------------------------------------------------------ admins: the dashboard

  /** For engine admins, a button that opens the admin dashboard in the main area. */
  private _renderAdmin(isAdmin: boolean): void {
    if (!isAdmin || !this.openDashboard) {
      this._admin?.remove();
      this._admin = null;
      return;
    }
    if (!this._admin) {
      const admin = section('jp-Potluck-admin', 'All users (admin)');
      admin.appendChild(el('p', 'jp-Potluck-hint',
        "Every user's and group's quota and usage over time, latency, quota overrides and everyone's runs."));
      const open = el('button', 'jp-Button jp-mod-styled jp-mod-accept jp-Potluck-openDashboard', 'Open the admin dashboard');
      const go = this.openDashboard;
      open.addEventListener('click', () => go());
      admin.appendChild(open);
      this.node.appendChild(admin);
      this._admin = admin;
    }
  }

  private _poll: Poll;
  private _who: HTMLElement;
  private _error: HTMLElement;
  private _engine: HTMLElement;
  private _engineBody: HTMLElement;
  private _quota: HTMLTableElement;
  private _latency: HTMLElement;
  private _latencyBody: HTMLElement;
  private _runs: HTMLTableElement;
  private _runsEmpty: HTMLElement;
  private _contexts: HTMLTableElement;
  private _contextsEmpty: HTMLElement;
  private _admin: HTMLElement | null = null;
  private _streams = new Map<string, IStream>();
  private _fetchError: string | null = null;
  private _actionError: string | null = null;
}
