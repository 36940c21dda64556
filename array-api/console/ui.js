// Small DOM helpers. Every text reaches the page through textContent or an attribute, never as
// HTML: a container named `<script>` is shown as those characters.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

export function bytes(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${u[i]}`;
}
export const rate = (n) => (n === undefined ? '–' : `${bytes(n)}/s`);
export const pct = (n) => (n === undefined ? '–' : `${n.toFixed(1)} %`);
export function when(t) {
  if (!t) return '–';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

export function toast(msg, bad) {
  const t = document.getElementById('toast');
  t.textContent = msg;
  t.className = bad ? 'toast bad' : 'toast';
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

/**
 * A line chart of a few series over the last `points` samples, in SVG. Its buffers are fixed
 * rings: memory does not grow however long it runs.
 */
export class Chart {
  constructor(title, series, fmt, points = 150) {
    this.fmt = fmt;
    this.points = points;
    this.series = series.map((name, i) => ({ name, data: new Float64Array(points), cls: `s${i}` }));
    this.n = 0;
    this.head = 0;
    this.svg = s('svg', { viewBox: '0 0 300 80', preserveAspectRatio: 'none', class: 'chart-svg' });
    this.paths = this.series.map((x) => {
      const p = s('path', { class: `line ${x.cls}` });
      this.svg.append(p);
      return p;
    });
    this.legend = h('div', { class: 'legend' });
    this.el = h('div', { class: 'chart' }, h('div', { class: 'chart-title' }, title), this.svg, this.legend);
    this.labels = this.series.map((x) => {
      const v = h('span', { class: `val ${x.cls}` }, '–');
      this.legend.append(h('span', { class: 'key' }, h('i', { class: `dot ${x.cls}` }), `${x.name} `, v));
      return v;
    });
  }

  push(values) {
    this.series.forEach((x, i) => { x.data[this.head] = values[i] ?? 0; });
    this.head = (this.head + 1) % this.points;
    this.n = Math.min(this.n + 1, this.points);
    this.labels.forEach((l, i) => { l.textContent = this.fmt(values[i]); });
    this.draw();
  }

  draw() {
    let max = 0;
    for (const x of this.series) for (let i = 0; i < this.n; i++) max = Math.max(max, x.data[i]);
    if (max <= 0) max = 1;
    const start = (this.head - this.n + this.points) % this.points;
    this.series.forEach((x, si) => {
      let d = '';
      if (this.n < 2) { this.paths[si].setAttribute('d', d); return; }
      for (let i = 0; i < this.n; i++) {
        const v = x.data[(start + i) % this.points];
        const px = (300 * (this.points - this.n + i)) / (this.points - 1);
        const py = 78 - (76 * v) / max;
        d += `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`;
      }
      this.paths[si].setAttribute('d', d);
    });
  }
}

/**
 * A list that builds DOM rows only for what is on screen (plus a margin): 250 containers or
 * 1000 jobs cost a few dozen rows. `render(item)` makes a row; `key(item)` names it.
 */
export class VirtualList {
  constructor(columns, render, rowHeight = 34, height = 520) {
    this.items = [];
    this.render = render;
    this.rowHeight = rowHeight;
    this.head = h('div', { class: 'vrow vhead' }, columns.map((c) => h('span', { class: `c-${c[0]}` }, c[1])));
    this.spacer = h('div', { class: 'vspacer' });
    this.body = h('div', { class: 'vbody' });
    this.scroller = h('div', { class: 'vscroll', onscroll: () => this.draw() }, this.spacer, this.body);
    this.scroller.style.height = `${height}px`;
    this.el = h('div', { class: 'vlist' }, this.head, this.scroller);
    this.shown = '';
  }

  set(items) {
    this.items = items;
    this.spacer.style.height = `${items.length * this.rowHeight}px`;
    this.shown = '';
    this.draw();
  }

  /** The items whose rows are on screen now. */
  visible() {
    const first = Math.max(0, Math.floor(this.scroller.scrollTop / this.rowHeight) - 5);
    const count = Math.ceil((this.scroller.clientHeight || 520) / this.rowHeight) + 10;
    return { first, items: this.items.slice(first, first + count) };
  }

  draw() {
    const { first, items } = this.visible();
    const sig = `${first}:${items.length}`;
    if (sig === this.shown && !this.dirty) return;
    this.shown = sig;
    this.dirty = false;
    this.body.style.transform = `translateY(${first * this.rowHeight}px)`;
    this.body.replaceChildren(...items.map((it) => {
      const row = this.render(it);
      row.classList.add('vrow');
      row.style.height = `${this.rowHeight}px`;
      return row;
    }));
  }

  refresh() { this.dirty = true; this.draw(); }
}

export function button(label, onclick, cls) {
  return h('button', { type: 'button', class: cls || '', onclick }, label);
}

/** Runs an action of a button, showing its error. */
export async function act(what, f) {
  try {
    await f();
    toast(`${what}: done`);
  } catch (e) {
    toast(`${what}: ${e.message}`, true);
  }
}
