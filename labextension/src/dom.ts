/**
 * Small DOM helpers the panel and the dashboard share: elements, tables whose rows are kept by
 * key and updated in place (so a refresh never throws away a button under the pointer or a
 * half-filled form). Plain DOM, no JupyterLab imports: the engine's own dashboard page uses it too.
 */

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  cls?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (cls) {
    e.className = cls;
  }
  if (text !== undefined) {
    e.textContent = text;
  }
  return e;
}

export function setText(e: Element | null, text: string): void {
  if (e && e.textContent !== text) {
    e.textContent = text;
  }
}

/** A table with a header row; rows go in its tbody. */
export function table(cls: string, headers: string[]): HTMLTableElement {
  const t = el('table', `jp-Potluck-table ${cls}`);
  const tr = el('tr');
  for (const h of headers) {
    tr.appendChild(el('th', undefined, h));
  }
  t.createTHead().appendChild(tr);
  t.createTBody();
  return t;
}

export function td(cls: string): HTMLTableCellElement {
  return el('td', cls);
}

export function section(cls: string, heading: string): HTMLElement {
  const s = el('section', `jp-Potluck-section ${cls}`);
  s.appendChild(el('h3', 'jp-Potluck-heading', heading));
  return s;
}

/** Make `tbody`'s rows the items' rows, in order: reuse a row by its key, create missing ones, drop the rest. */
export function syncRows<T>(
  tbody: HTMLTableSectionElement,
  items: T[],
  attr: string,
  key: (item: T) => string,
  create: (item: T) => HTMLTableRowElement,
  update: (row: HTMLTableRowElement, item: T) => void
): void {
  const existing = new Map<string, HTMLTableRowElement>();
  for (const row of Array.from(tbody.rows)) {
    existing.set(row.getAttribute(attr) || '', row);
  }
  let prev: Element | null = null;
  for (const item of items) {
    const k = key(item);
    let row = existing.get(k);
    if (row) {
      existing.delete(k);
    } else {
      row = create(item);
      row.setAttribute(attr, k);
    }
    update(row, item);
    const want: Element | null = prev ? prev.nextElementSibling : tbody.firstElementChild;
    if (want !== row) {
      tbody.insertBefore(row, want);
    }
    prev = row;
  }
  for (const row of existing.values()) {
    row.remove();
  }
}
