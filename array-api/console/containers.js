// Containers: the whole list (virtualised, filtered by name) and one container's page — its
// facts, actions, live usage (the stats stream), its log followed, and a terminal (exec).
import * as api from './api.js';
import { h, Chart, bytes, rate, pct, when } from './ui.js';
import { containerTable, containerFigures, scrape, Rates, actions } from './home.js';

const MAX_LOG_CHARS = 256 * 1024;

export async function list(view, signal) {
  const live = new Map();
  const table = containerTable(live, 640);
  const filter = h('input', { type: 'search', placeholder: 'filter by name', class: 'filter' });
  const count = h('span', { class: 'count' });
  let all = [];
  const show = () => {
    const f = filter.value.trim();
    const items = f ? all.filter((c) => c.name.includes(f)) : all;
    count.textContent = `${items.length} of ${all.length}`;
    table.set(items);
  };
  filter.addEventListener('input', show);
  const load = async () => { all = await api.get('/v1/containers?all=true', signal); show(); };
  table.onchange = () => load().catch(() => {});
  view.replaceChildren(h('h1', {}, 'Containers'), h('div', { class: 'bar' }, filter, count), table.el);
  await load();
  const rates = new Rates();
  let tick = 0;
  while (!signal.aborted) {
    await new Promise((res) => setTimeout(res, 2000));
    try {
      const m = await scrape(signal);
      containerFigures(live, m, rates.step(performance.now(), m.counters));
      if (++tick % 3 === 0) await load();
      else table.refresh();
    } catch (e) {
      if (signal.aborted || e.status === 401) return;
    }
  }
}

function facts(c) {
  const row = (k, v) => [h('dt', {}, k), h('dd', {}, v ?? '–')];
  return h('dl', { class: 'facts' },
    row('id', c.id), row('image', c.image), row('state', c.state), row('engine', c.engine),
    row('command', (c.command || []).join(' ') || '(image default)'),
    row('created', when(c.created_at)), row('started', when(c.started_at)),
    row('finished', when(c.finished_at)), row('exit code', c.exit_code),
    row('restarts', `${c.restart_count} (policy ${c.restart})`),
    row('health', c.health ? c.health.status : null),
    row('labels', Object.entries(c.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ')));
}

export async function detail(view, signal, id) {
  const path = `/v1/containers/${api.enc(id)}`;
  let c = await api.get(path, signal);
  const title = h('h1', {}, 'Container ', h('span', { class: 'name' }, c.name));
  const state = h('span', { class: `state st-${c.state}` }, c.state);
  const bar = h('div', { class: 'bar' });
  const factsBox = h('div', {}, facts(c));
  const refresh = async () => {
    try { c = await api.get(path, signal); } catch (_) { return; }
    state.textContent = c.state;
    state.className = `state st-${c.state}`;
    factsBox.replaceChildren(facts(c));
    bar.replaceChildren(...actions(c, refresh),
      h('a', { class: 'btn', href: `#/containers/${api.enc(c.id)}/exec` }, 'Terminal'));
  };
  await refresh();
  const cpu = new Chart('CPU', ['used'], pct);
  const mem = new Chart('Memory', ['in use'], bytes);
  const io = new Chart('Disk I/O', ['read', 'write'], rate);
  const logs = h('pre', { class: 'logs', id: 'logs' });
  view.replaceChildren(title, h('p', {}, state), bar,
    h('div', { class: 'grid' }, h('section', { class: 'card' }, factsBox),
      h('section', { class: 'card' }, h('h2', {}, 'Live usage'), cpu.el, mem.el, io.el)),
    h('section', { class: 'card' }, h('h2', {}, 'Log (followed)'), logs));

  // The log, followed: the last 200 lines, then what comes (bounded on the page).
  const follow = async () => {
    while (!signal.aborted) {
      try {
        await api.stream(`${path}/logs?follow=true&tail=200`, signal, (t) => {
          const stick = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
          logs.append(t);
          if (logs.textContent.length > MAX_LOG_CHARS) {
            logs.textContent = logs.textContent.slice(-MAX_LOG_CHARS / 2);
          }
          if (stick) logs.scrollTop = logs.scrollHeight;
        });
      } catch (e) {
        if (signal.aborted || e.status === 404 || e.status === 401) return;
      }
      // The log ends when the container stops for good: look again in a while.
      await new Promise((res) => setTimeout(res, 3000));
      if (!signal.aborted) { logs.textContent = ''; await refresh(); }
    }
  };
  follow();

  // Live usage: the container's stats stream (one JSON line a second) while it runs.
  let prev = null;
  while (!signal.aborted) {
    try {
      await api.jsonLines(`${path}/stats?stream=true`, signal, (u) => {
        const now = performance.now();
        if (prev) {
          const dt = (now - prev.t) / 1000;
          cpu.push([((u.cpu.usage_ns - prev.u.cpu.usage_ns) / 1e9 / dt) * 100]);
          io.push([(u.io.read_bytes - prev.u.io.read_bytes) / dt, (u.io.write_bytes - prev.u.io.write_bytes) / dt]);
        }
        mem.push([u.memory.current]);
        prev = { t: now, u };
      });
    } catch (e) {
      if (signal.aborted || e.status === 401 || e.status === 404) return;
    }
    prev = null;
    await new Promise((res) => setTimeout(res, 3000));
    await refresh();
  }
}
