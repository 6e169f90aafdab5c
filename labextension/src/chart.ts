/**
 * The dashboard's line charts: an SVG figure with axes, one line per series and a legend, drawn
 * from what `history.ts` computes (scales, ticks, paths). Plain DOM, no JupyterLab imports, no
 * charting library: a few dozen elements per chart.
 */

import { el, setText } from './dom';
import {
  bucketCount,
  formatTick,
  ISeries,
  IUsageHistory,
  linePath,
  niceMax,
  seriesColor,
  timeTicks,
  yTicks
} from './history';
import { formatCompact } from './model';

const SVG = 'http://www.w3.org/2000/svg';
const CHART_W = 560;
const CHART_H = 160;
const AXIS_LEFT = 48;
const AXIS_BOTTOM = 20;
const PAD_RIGHT = 24;      // room for the last time label

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: { [k: string]: string | number } = {}): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVG, tag);
  for (const k of Object.keys(attrs)) {
    e.setAttribute(k, String(attrs[k]));
  }
  return e;
}

/** An empty chart: a caption, the SVG, a legend (`data-kind` names what it plots). */
export function chartFigure(kind: string, caption: string): HTMLElement {
  const f = el('figure', 'jp-PotluckDash-chart');
  f.dataset.kind = kind;
  f.appendChild(el('figcaption', 'jp-PotluckDash-caption', caption));
  const s = svg('svg', { viewBox: `0 0 ${CHART_W + AXIS_LEFT + PAD_RIGHT} ${CHART_H + AXIS_BOTTOM + 6}`, role: 'img' });
  s.classList.add('jp-PotluckDash-svg');
  f.appendChild(s);
  f.appendChild(el('ul', 'jp-PotluckDash-legend'));
  return f;
}

/** Draw `series` into a figure from `chartFigure` (an empty range says `empty`). */
export function drawChart(fig: HTMLElement, series: ISeries[], h: IUsageHistory, caption: string,
  empty: string): void {
  setText(fig.querySelector('figcaption'), caption);
  const s = fig.querySelector('svg') as SVGSVGElement;
  s.textContent = '';
  s.setAttribute('aria-label', caption);
  const max = niceMax(Math.max(0, ...series.map(x => Math.max(...x.values))));
  const plot = svg('g', { transform: `translate(${AXIS_LEFT},4)` });
  for (const v of yTicks(max)) {
    const y = CHART_H - (v / max) * CHART_H;
    plot.appendChild(svg('line', { x1: 0, x2: CHART_W, y1: y, y2: y, class: 'jp-PotluckDash-grid' }));
    const label = svg('text', { x: -4, y: y + 4, 'text-anchor': 'end', class: 'jp-PotluckDash-tick' });
    label.textContent = series.length ? formatTick(v) : '';
    plot.appendChild(label);
  }
  const count = bucketCount(h.since, h.until, h.bucketSeconds);
  for (const t of timeTicks(h)) {
    const x = count > 1 ? (t.index / (count - 1)) * CHART_W : 0;
    const label = svg('text', { x, y: CHART_H + 16, 'text-anchor': 'middle', class: 'jp-PotluckDash-tick' });
    label.textContent = t.label;
    plot.appendChild(label);
  }
  series.forEach((x, i) => {
    const path = svg('path', { d: linePath(x.values, CHART_W, CHART_H, max), stroke: seriesColor(x, i),
      class: 'jp-PotluckDash-line', 'data-series': x.name, 'data-total': x.total });
    const title = svg('title');
    title.textContent = `${x.name}: ${formatCompact(x.total)} in this range`;
    path.appendChild(title);
    plot.appendChild(path);
  });
  if (!series.length) {
    const t = svg('text', { x: CHART_W / 2, y: CHART_H / 2, 'text-anchor': 'middle', class: 'jp-PotluckDash-empty' });
    t.textContent = empty;
    plot.appendChild(t);
  }
  s.appendChild(plot);
  const legend = fig.querySelector('ul') as HTMLUListElement;
  legend.textContent = '';
  series.forEach((x, i) => {
    const li = el('li', 'jp-PotluckDash-legendItem');
    li.dataset.series = x.name;
    const swatch = el('span', 'jp-PotluckDash-swatch');
    swatch.style.background = seriesColor(x, i);
    li.append(swatch, el('span', 'jp-PotluckDash-seriesName', x.name),
      el('span', 'jp-PotluckDash-seriesTotal', formatCompact(x.total)));
    legend.appendChild(li);
  });
}
