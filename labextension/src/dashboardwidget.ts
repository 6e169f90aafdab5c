/**
 * The admin dashboard in JupyterLab's main area: `Dashboard` (plain DOM) in a Lumino widget,
 * refreshed by a poll while it is shown (standby while hidden or when the tab is hidden).
 */

import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import { Dashboard } from './dashboard';
import { IRequester } from './model';

/** How often the shown dashboard refreshes (ms). */
export const DASHBOARD_INTERVAL = 5000;

export class DashboardWidget extends Widget {
  constructor(requester: IRequester, hubAdminUrl: string | null, enginePageUrl: string | null,
    servicesUrl: string | null = null) {
    super();
    this.id = 'potluck-dashboard';
    this.addClass('jp-PotluckDashWidget');
    this.title.label = 'Potluck dashboard';
    this.title.caption = 'Potluck admin dashboard: every user and group, usage over time, quotas, runs, the hub\'s engines';
    this.title.closable = true;
    this.dashboard = new Dashboard({ requester, hubAdminUrl, enginePageUrl, servicesUrl });
    this.node.appendChild(this.dashboard.node);
    this._poll = new Poll({
      factory: () => this.dashboard.refresh(),
      frequency: { interval: DASHBOARD_INTERVAL, backoff: false },
      standby: () => !this.isVisible || 'when-hidden',
      name: 'potluck:dashboard'
    });
  }

  readonly dashboard: Dashboard;

  protected onAfterShow(): void {
    void this._poll.refresh();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    this.dashboard.dispose();
    super.dispose();
  }

  private _poll: Poll;
}
