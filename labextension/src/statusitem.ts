/**
 * The status-bar item: `Potluck 120/2000 tok/min · 3/64 pages · queue 0`, coloured by how
 * close I am to a limit (`data-level`), a tooltip with the details; a click opens the panel.
 */

import { Widget } from '@lumino/widgets';

import { errorSummary, statusSummary } from './model';
import { PotluckState } from './state';

export class PotluckStatusItem extends Widget {
  constructor(
    readonly state: PotluckState,
    onClick: () => void
  ) {
    super();
    this.id = 'potluck-status';
    this.addClass('jp-PotluckStatus');
    this.node.textContent = 'Potluck …';
    this.node.dataset.level = 'ok';
    this.node.title = 'Potluck: connecting to the engine…';
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this.node.addEventListener('click', onClick);
    this.node.addEventListener('keydown', (e: KeyboardEvent) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        onClick();
      }
    });
    state.changed.connect(this.update, this);
  }

  protected onUpdateRequest(): void {
    const s = this.state;
    let summary;
    if (s.error || !s.me || !s.status) {
      summary = errorSummary(s.error || 'no answer from the Potluck engine yet');
    } else {
      summary = statusSummary(s.me, s.status);
    }
    this.node.textContent = summary.text;
    this.node.dataset.level = summary.level;
    this.node.title = summary.title;
  }

  dispose(): void {
    this.state.changed.disconnect(this.update, this);
    super.dispose();
  }
}
