/**
 * What the status item and the panel share: the engine's status and my quota and usage,
 * polled (standby while the page is hidden), with a signal when they change.
 */

import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { PotluckAPI } from './api';
import { DEFAULT_RUN_STATES, failureText, IEngineStatus, IMe, IRunStates, parseMe, parseStatus } from './model';

/** The status bar refreshes this often (ms); the panel, while shown, every PANEL_INTERVAL. */
export const SUMMARY_INTERVAL = 5000;
export const PANEL_INTERVAL = 2000;

export class PotluckState {
  constructor(readonly api: PotluckAPI = new PotluckAPI()) {
    this.poll = new Poll({
      factory: () => this.refreshSummary(),
      frequency: { interval: SUMMARY_INTERVAL, backoff: false },
      standby: 'when-hidden',
      name: 'potluck:summary'
    });
  }

  readonly poll: Poll;
  me: IMe | null = null;
  status: IEngineStatus | null = null;
  /** The one-line reason the engine cannot be used right now ("engine unreachable: ..."), or null. */
  error: string | null = null;

  /** The engine's run states (the defaults until its status has been read). */
  get runStates(): IRunStates {
    return this.status ? this.status.runStates : DEFAULT_RUN_STATES;
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Fetch `status` and `me` (never throws: a failure becomes `error`). */
  async refreshSummary(): Promise<void> {
    const [status, me] = await Promise.allSettled([
      this.api.request('status'),
      this.api.request('me')
    ]);
    const errors: string[] = [];
    if (status.status === 'fulfilled') {
      this.status = parseStatus(status.value);
    } else {
      errors.push(failureText(status.reason));
    }
    if (me.status === 'fulfilled') {
      this.me = parseMe(me.value);
    } else {
      errors.push(failureText(me.reason));
    }
    this.error = errors.length ? errors[0] : null;
    this._changed.emit();
  }

  dispose(): void {
    this.poll.dispose();
    Signal.clearData(this);
  }

  private _changed = new Signal<this, void>(this);
}
