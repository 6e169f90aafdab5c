/**
 * The admin dashboard's "Engines" section: every engine of the hub (all pools), its pool and
 * accelerator, whether it is alive and how long since its heartbeat, the load it last reported,
 * and which one is "this engine" (the one the dashboard talks to). Under a Hub each name links
 * to that engine's own dashboard page (services are siblings under `/services/`).
 *
 * Plain DOM (`dom.ts`), no JupyterLab imports: the lab's widget and the engine's own page both
 * show it. It only draws what `engines.ts` parsed; it never asks anything itself.
 */

import { el, section, setText, syncRows, table, td } from './dom';
import { enginePageHref, engineState, heartbeatText, IHubEngines, loadCells, poolLabel } from './engines';

export class EnginesSection {
  constructor(readonly servicesUrl: string | null) {
    this.node = section('jp-PotluckDash-enginesSection', 'Engines');
    this._table = table('jp-PotluckDash-engines', ['engine', 'pool', 'accelerator', 'state', 'last heartbeat',
      'queue', 'requests', 'KV pages']);
    this.node.appendChild(this._table);
    this.node.hidden = true;
  }

  readonly node: HTMLElement;

  /** Draw the engines; null (an engine too old to list them, or none listed) hides the section. */
  update(hub: IHubEngines | null): void {
    const engines = hub ? hub.engines : [];
    this.node.hidden = engines.length === 0;
    syncRows(this._table.tBodies[0], engines, 'data-engine', e => e.name, () => {
      const tr = el('tr');
      for (const cls of ['Name', 'Pool', 'Accelerator', 'State', 'Heartbeat', 'Queue', 'Requests', 'Kv']) {
        tr.appendChild(td(`jp-PotluckDash-engine${cls}`));
      }
      return tr;
    }, (tr, e) => {
      const c = tr.cells;
      const mine = hub!.thisEngine === e.name;
      const href = enginePageHref(this.servicesUrl, e.name);
      const shown = c[0].firstElementChild as HTMLAnchorElement | HTMLSpanElement | null;
      if (!shown || (shown.tagName === 'A') !== !!href) {
        c[0].textContent = '';
        const name = href ? el('a', 'jp-PotluckDash-engineLink') : el('span');
        if (href) {
          (name as HTMLAnchorElement).target = '_blank';
          (name as HTMLAnchorElement).rel = 'noopener';
        }
        c[0].append(name, el('span', 'jp-PotluckDash-thisEngine', ' (this engine)'));
      }
      const name = c[0].firstElementChild as HTMLElement;
      setText(name, e.name);
      if (href) {
        (name as HTMLAnchorElement).href = href;
        name.title = `Open ${e.name}'s own dashboard`;
      }
      (c[0].lastElementChild as HTMLElement).hidden = !mine;
      tr.dataset.this = mine ? 'true' : 'false';
      setText(c[1], poolLabel(e.pool));
      c[1].title = e.pool ? '' : 'not in a pool: it serves every user';
      setText(c[2], e.accelerator);
      const state = engineState(e);
      setText(c[3], state.text);
      tr.dataset.state = state.text;
      tr.dataset.level = state.level;
      setText(c[4], heartbeatText(e));
      const load = loadCells(e.load);
      setText(c[5], load[0]);
      setText(c[6], load[1]);
      setText(c[7], load[2]);
      const old = e.alive ? '' : 'as it last reported';
      c[5].title = c[6].title = c[7].title = old;
    });
  }

  private _table: HTMLTableElement;
}
