/**
 * jupyter-potluck: Potluck in JupyterLab. A status-bar item with my token use and KV pages
 * against my quota and the engine's queue; a "Potluck" side panel with the engine, my quota,
 * my runs (live output, cancel), my saved contexts; and for engine admins (`/api/me` says
 * `is_admin`) the admin dashboard in the main area: a command, a launcher item and a button in
 * the panel, none of them shown to other users.
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ILauncher } from '@jupyterlab/launcher';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { PotluckAPI } from './api';
import { DashboardWidget } from './dashboardwidget';
import { PotluckPanel } from './panel';
import { PotluckState } from './state';
import { PotluckStatusItem } from './statusitem';

const potIconSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M4 9h16v2h-1v6a3 3 0 0 1-3 3H8a3 3 0 0 1-3-3v-6H4zM2 11h2v2H2zm18 0h2v2h-2z"/>
    <path d="M7 6h10a1 1 0 0 1 1 1v1H6V7a1 1 0 0 1 1-1zm3-3h4v2h-4z"/>
  </g>
</svg>`;

export const potluckIcon = new LabIcon({ name: 'jupyter-potluck:pot', svgstr: potIconSvg });

export const OPEN_PANEL = 'potluck:open-panel';
export const OPEN_DASHBOARD = 'potluck:open-dashboard';

/** The Hub's admin page (where group quotas are edited), when this lab runs under a Hub. */
function hubAdminUrl(): string | null {
  const prefix = PageConfig.getOption('hubPrefix');
  return prefix ? URLExt.join(PageConfig.getOption('hubHost') || '', prefix, 'admin') : null;
}

/** The Hub's services (`/services/` beside `/hub/`), when under a Hub: each engine's page is there. */
function servicesUrl(): string | null {
  const prefix = PageConfig.getOption('hubPrefix');
  if (!prefix) {
    return null;
  }
  const base = prefix.replace(/hub\/?$/, '');
  return URLExt.join(PageConfig.getOption('hubHost') || '', base, 'services') + '/';
}

/**
 * The engine's own dashboard page, when under a Hub: `services/potluck/` until the dashboard has
 * read which engine it talks to (with pools, e.g. `services/potluck-cpu-0/`).
 */
function enginePageUrl(): string | null {
  const services = servicesUrl();
  return services ? `${services}potluck/` : null;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-potluck:plugin',
  description: 'Potluck: shared LLM engine usage, quota, runs and the admin view.',
  autoStart: true,
  optional: [IStatusBar, ICommandPalette, ILayoutRestorer, ILauncher],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    launcher: ILauncher | null
  ) => {
    const state = new PotluckState(new PotluckAPI());
    const isAdmin = () => !!state.me && state.me.isAdmin;
    const panel = new PotluckPanel(state, potluckIcon, () => void app.commands.execute(OPEN_DASHBOARD));
    app.shell.add(panel, 'right', { rank: 900 });
    if (restorer) {
      restorer.add(panel, 'potluck-panel');
    }

    app.commands.addCommand(OPEN_PANEL, {
      label: 'Open the Potluck Panel',
      caption: 'My Potluck usage, quota, runs and saved contexts',
      icon: potluckIcon,
      execute: () => {
        app.shell.activateById(panel.id);
      }
    });
    if (palette) {
      palette.addItem({ command: OPEN_PANEL, category: 'Potluck' });
    }

    // One dashboard at a time; it polls only while shown. Non-admins never see the command.
    let dashboard: DashboardWidget | null = null;
    app.commands.addCommand(OPEN_DASHBOARD, {
      label: 'Potluck Admin Dashboard',
      caption: "Every user's and group's quota and usage over time, latency, overrides and runs (engine admins)",
      icon: potluckIcon,
      isVisible: isAdmin,
      isEnabled: isAdmin,
      execute: () => {
        if (!dashboard || dashboard.isDisposed) {
          dashboard = new DashboardWidget(state.api, hubAdminUrl(), enginePageUrl(), servicesUrl());
          dashboard.title.icon = potluckIcon;
          app.shell.add(dashboard, 'main');
        }
        app.shell.activateById(dashboard.id);
      }
    });
    // The palette and launcher items appear once /api/me has said this user is an engine admin.
    let adminItems = false;
    state.changed.connect(() => {
      app.commands.notifyCommandChanged(OPEN_DASHBOARD);
      if (adminItems || !isAdmin()) {
        return;
      }
      adminItems = true;
      palette?.addItem({ command: OPEN_DASHBOARD, category: 'Potluck' });
      launcher?.add({ command: OPEN_DASHBOARD, category: 'Other', rank: 50 });
    });

    if (statusBar) {
      const item = new PotluckStatusItem(state, () => void app.commands.execute(OPEN_PANEL));
      statusBar.registerStatusItem('jupyter-potluck:status', {
        item,
        align: 'left',
        rank: 100,
        isActive: () => true
      });
    }
    void state.poll.start();
  }
};

export default plugin;
