// The home page: each engine's share and caps with its live CPU, memory and I/O, beside the
// NFS gateway's throughput and latency (all from /metrics, one request every 2 s), then the
// containers (a virtualised list, live figures for the running ones from the same scrape).
import * as api from './api.js';
import { h, Chart, VirtualList, bytes, rate, pct, button, act } from './ui.js';

const PERIOD_MS = 2000;

const FAMILIES = new Set([
  'inarray_engine_cpu_seconds_total', 'inarray_engine_memory_bytes',
  'inarray_engine_io_read_bytes_total', 'inarray_engine_io_write_bytes_total',
  'inarray_container_cpu_seconds_total', 'inarray_container_memory_bytes',
  'inarray_container_io_read_bytes_total', 'inarray_container_io_write_bytes_total',
  'inarray_nfs_read_bytes_total', 'inarray_nfs_written_bytes_total',
  'inarray_nfs_operation_duration_seconds_sum', 'inarray_nfs_operation_duration_seconds_count',
  'inarray_containers',
]);

/** Per-second rates of counters between two scrapes, keyed by series. */
export class Rates {
  constructor() { this.prev = new Map(); this.at = 0; }
  step(now, counters) {
    const dt = this.at ? (now - this.at) / 1000 : 0;
    const out = new Map();
    for (const [k, v] of counters) {
      const p = this.prev.get(k);
      if (dt > 0 && p !== undefined && v >= p) out.set(k, (v - p) / dt);
    }
    this.prev = counters;
    this.at = now;
    return out;
  }
}

/** One scrape of /metrics folded into {counters, gauges} maps keyed "name|label". */
export async function scrape(signal) {
  const body = await api.text('/metrics', signal);
  const counters = new Map();
  const gauges = new Map();
  const add = (m, k, v) => m.set(k, (m.get(k) || 0) + v);
  for (const x of api.parseMetrics(body, (n) => FAMILIES.has(n))) {
    const who = x.labels.engine !== undefined && x.name.startsWith('inarray_engine')
      ? x.labels.engine : x.labels.id ?? x.labels.export ?? x.labels.state ?? '';
    const key = `${x.name}|${who}`;
    if (x.name.endsWith('_total') || x.name.endsWith('_sum') || x.name.endsWith('_count')) {
      add(counters, key, x.value);
      // The gateway as a whole: every export and procedure.
      if (x.name.startsWith('inarray_nfs')) add(counters, `${x.name}|*`, x.value);
    } else {
      gauges.set(key, x.value);
    }
  }
  return { counters, gauges };
}

function caps(r) {
  const out = [];
  if (r.cpu_weight) out.push(`cpu share ${r.cpu_weight}`);
  if (r.io_weight) out.push(`io share ${r.io_weight}`);
  if (r.cpus) out.push(`${r.cpus} cpus`);
  if (r.memory) out.push(`mem ≤ ${bytes(r.memory)}`);
  if (r.read_bps) out.push(`read ≤ ${rate(r.read_bps)}`);
  if (r.write_bps) out.push(`write ≤ ${rate(r.write_bps)}`);
  if (r.read_iops) out.push(`read ≤ ${r.read_iops} iops`);
  if (r.write_iops) out.push(`write ≤ ${r.write_iops} iops`);
  if (r.pids) out.push(`pids ≤ ${r.pids}`);
  return out.length ? out.join(' · ') : 'no caps';
}

/** The containers table with live figures and actions; shared by the home and list pages. */
export function containerTable(live, height) {
  const list = new VirtualList(
    [['name', 'Name'], ['state', 'State'], ['engine', 'Engine'], ['cpu', 'CPU'], ['mem', 'Memory'],
      ['io', 'I/O r / w'], ['act', '']],
    (c) => {
      const l = live.get(c.id) || {};
      const running = c.state === 'running' || c.state === 'restarting';
      return h('div', { 'data-id': c.id, 'data-name': c.name },
        h('span', { class: 'c-name' }, h('a', { href: `#/containers/${api.enc(c.id)}` }, c.name)),
        h('span', { class: `c-state st-${c.state}` }, c.state),
        h('span', { class: 'c-engine' }, c.engine),
        h('span', { class: 'c-cpu' }, running ? pct(l.cpu) : ''),
        h('span', { class: 'c-mem' }, running ? bytes(l.mem) : ''),
        h('span', { class: 'c-io' }, running ? `${rate(l.read)} / ${rate(l.write)}` : ''),
        h('span', { class: 'c-act' }, ...actions(c, () => list.onchange && list.onchange())));
    }, 34, height);
  return list;
}

export function actions(c, changed) {
  const id = api.enc(c.id);
  const go = (what, f) => act(`${what} ${c.name}`, async () => { await f(); changed(); });
  const running = c.state === 'running' || c.state === 'restarting';
  return [
    running ? button('Stop', () => go('stop', () => api.post(`/v1/containers/${id}/stop?timeout=5`)), 'stop')
      : button('Start', () => go('start', () => api.post(`/v1/containers/${id}/start`)), 'start'),
    button('Restart', () => go('restart', () => api.post(`/v1/containers/${id}/restart?timeout=5`)), 'restart'),
    button('Remove', () => {
      if (window.confirm(`Remove ${c.name}${running ? ' (it is running: it is killed)' : ''}?`)) {
        go('remove', () => api.del(`/v1/containers/${id}?force=true`));
      }
    }, 'remove'),
  ];
}

/** Keeps `live` (container id → {cpu, mem, read, write}) from a scrape's rates and gauges. */
export function containerFigures(live, m, r) {
  live.clear();
  for (const [k, v] of m.gauges) {
    const [name, id] = k.split('|');
    if (name !== 'inarray_container_memory_bytes') continue;
    live.set(id, {
      mem: v,
      cpu: (r.get(`inarray_container_cpu_seconds_total|${id}`) ?? 0) * 100,
      read: r.get(`inarray_container_io_read_bytes_total|${id}`),
      write: r.get(`inarray_container_io_write_bytes_total|${id}`),
    });
  }
}

export async function home(view, signal) {
  const engines = await api.get('/v1/engines', signal);
  const info = await api.get('/v1/info', signal);
  const engineCards = new Map();
  const grid = h('div', { class: 'grid' });
  for (const e of engines) {
    const c = {
      cpu: new Chart('CPU', ['used'], pct),
      mem: new Chart('Memory', ['in use'], bytes),
      io: new Chart('Disk I/O', ['read', 'write'], rate),
    };
    engineCards.set(e.name, c);
    grid.append(h('section', { class: 'card engine', 'data-engine': e.name },
      h('h2', {}, `engine ${e.name}`, e.name === 'storage' ? h('span', { class: 'tag' }, 'the array service') : null),
      h('p', { class: 'caps' }, caps(e.resources)), c.cpu.el, c.mem.el, c.io.el));
  }
  const nfs = {
    tp: new Chart('Throughput', ['read', 'write'], rate),
    lat: new Chart('Mean latency', ['per call'], (v) => (v === undefined ? '–' : `${(v * 1000).toFixed(2)} ms`)),
    ops: new Chart('Calls', ['per second'], (v) => (v === undefined ? '–' : `${v.toFixed(0)}/s`)),
  };
  grid.append(h('section', { class: 'card nfs' },
    h('h2', {}, 'NFS gateway'),
    h('p', { class: 'caps' }, info.nfs_listen ? `serving on ${info.nfs_listen}` : 'not serving (no nfs_listen)'),
    nfs.tp.el, nfs.lat.el, nfs.ops.el));

  const counts = h('p', { class: 'counts' });
  const live = new Map();
  const table = containerTable(live, 420);
  view.replaceChildren(
    h('h1', {}, 'The array and what runs inside it'),
    grid,
    h('section', { class: 'card' }, h('h2', {}, 'Containers'), counts, table.el));

  const rates = new Rates();
  let containers = [];
  const loadContainers = async () => {
    containers = await api.get('/v1/containers?all=true', signal);
    table.set(containers);
  };
  table.onchange = () => loadContainers().catch(() => {});
  await loadContainers();
  let tick = 0;
  while (!signal.aborted) {
    try {
      const m = await scrape(signal);
      const r = rates.step(performance.now(), m.counters);
      if (r.size) {
        for (const [name, c] of engineCards) {
          c.cpu.push([(r.get(`inarray_engine_cpu_seconds_total|${name}`) ?? 0) * 100]);
          c.mem.push([m.gauges.get(`inarray_engine_memory_bytes|${name}`)]);
          c.io.push([r.get(`inarray_engine_io_read_bytes_total|${name}`),
            r.get(`inarray_engine_io_write_bytes_total|${name}`)]);
        }
        const calls = r.get('inarray_nfs_operation_duration_seconds_count|*') ?? 0;
        const secs = r.get('inarray_nfs_operation_duration_seconds_sum|*') ?? 0;
        nfs.tp.push([r.get('inarray_nfs_read_bytes_total|*') ?? 0, r.get('inarray_nfs_written_bytes_total|*') ?? 0]);
        nfs.lat.push([calls > 0 ? secs / calls : 0]);
        nfs.ops.push([calls]);
      }
      containerFigures(live, m, r);
      const by = ['running', 'restarting', 'created', 'exited', 'dead']
        .map((s) => `${m.gauges.get(`inarray_containers|${s}`) ?? 0} ${s}`);
      counts.textContent = by.join(' · ');
      if (++tick % 3 === 0) await loadContainers();
      else table.refresh();
    } catch (e) {
      if (signal.aborted) return;
      if (e.status === 401) return;
    }
    await new Promise((res) => setTimeout(res, PERIOD_MS));
  }
}
