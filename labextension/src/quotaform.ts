/**
 * The quota form the dashboard opens for a user's override and for a Hub group's quota: one
 * text field per quota field ("" leaves it unset, "none" is no limit; `model.ts` parses them),
 * Save, an optional Reset, Close. Plain DOM, no JupyterLab imports.
 */

import { el, setText } from './dom';
import { QuotaValue, quotaOverrideFromForm } from './model';

export interface IQuotaFormOptions {
  /** Classes of the form beside `jp-Potluck-quotaForm`, and its data attributes (`tenant`, `group`). */
  cls: string;
  data: { [key: string]: string };
  title: string;
  hint: string;
  fields: string[];
  /** Each field's text at first, and its placeholder (what applies when it is left blank). */
  value: (field: string) => string;
  placeholder: (field: string) => string;
  /** Unique per form kind, for the inputs' ids (labels point at them). */
  idPrefix: string;
  saveLabel: string;
  saveCls: string;
  save: (body: { [field: string]: QuotaValue }) => Promise<void>;
  /** A Reset button (remove the override) when given. */
  reset?: { title: string; action: () => Promise<void> };
  /** Runs a button's action: disables the button, shows the error, refreshes. */
  act: (button: HTMLButtonElement, action: () => Promise<unknown>) => Promise<void>;
  close: () => void;
}

export function quotaForm(o: IQuotaFormOptions): HTMLFormElement {
  const form = el('form', `jp-Potluck-quotaForm ${o.cls}`.trim());
  for (const k of Object.keys(o.data)) {
    form.dataset[k] = o.data[k];
  }
  form.appendChild(el('h4', 'jp-Potluck-subheading', o.title));
  form.appendChild(el('p', 'jp-Potluck-hint', o.hint));
  const inputs: { [field: string]: HTMLInputElement } = {};
  const grid = el('div', 'jp-Potluck-formGrid');
  for (const f of o.fields) {
    const label = el('label', 'jp-Potluck-formLabel', f);
    const input = el('input', 'jp-mod-styled jp-Potluck-formInput');
    input.name = f;
    input.type = 'text';
    input.value = o.value(f);
    input.placeholder = o.placeholder(f);
    label.htmlFor = input.id = `${o.idPrefix}-${f}`;
    inputs[f] = input;
    grid.append(label, input);
  }
  form.appendChild(grid);
  const msg = el('div', 'jp-Potluck-formError');
  const save = el('button', `jp-Button jp-mod-styled jp-mod-accept ${o.saveCls}`, o.saveLabel);
  save.type = 'submit';
  const buttons = el('div', 'jp-Potluck-formButtons');
  buttons.appendChild(save);
  if (o.reset) {
    const reset = el('button', 'jp-Button jp-mod-styled jp-mod-warn jp-Potluck-clearQuota', 'Reset');
    reset.title = o.reset.title;
    reset.type = 'button';
    const action = o.reset.action;
    reset.addEventListener('click', () => void o.act(reset, action));
    buttons.appendChild(reset);
  }
  const close = el('button', 'jp-Button jp-mod-styled jp-mod-reject jp-Potluck-closeQuota', 'Close');
  close.type = 'button';
  close.addEventListener('click', () => o.close());
  buttons.appendChild(close);
  form.append(msg, buttons);
  form.addEventListener('submit', (e: Event) => {
    e.preventDefault();
    const texts: { [field: string]: string } = {};
    for (const f of Object.keys(inputs)) {
      texts[f] = inputs[f].value;
    }
    let body: { [field: string]: QuotaValue };
    try {
      body = quotaOverrideFromForm(texts);
    } catch (err) {
      setText(msg, (err as Error).message);
      return;
    }
    void o.act(save, () => o.save(body));
  });
  return form;
}
