/**
 * jupyter-potluck: Potluck in JupyterLab. A status-bar item with my token use and KV pages
 * against my quota and the engine's queue; a "Potluck" side panel with the engine, my quota,
 * my runs (live output, cancel), my saved contexts, and for hub admins every user's usage
 * and quota (editable) and every run (cancellable).
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { PotluckAPI } from './api';
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

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-potluck:plugin',
  description: 'Potluck: shared LLM engine usage, quota, runs and the admin view.',
  autoStart: true,
  optional: [IStatusBar, ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const state = new PotluckState(new PotluckAPI());
    const panel = new PotluckPanel(state, potluckIcon);
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
