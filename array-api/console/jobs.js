// Jobs: the list (virtualised: 1000 jobs cost a few dozen rows) with each next fire, and one
// job's page with its run history; run now, suspend and resume.
import * as api from './api.js';
import { h, VirtualList, when, button, act } from './ui.js';

function jobActions(j, changed) {
  const n = api.enc(j.name);
  const go = (what, f) => act(`${what} ${j.name}`, async () => { await f(); changed(); });
  return [
    button('Run now', () => go('run', () => api.post(`/v1/jobs/${n}/run`)), 'run'),
    j.suspend
      ? button('Resume', () => go('resume', () => api.post(`/v1/jobs/${n}/resume`)), 'resume')
      : button('Suspend', () => go('suspend', () => api.post(`/v1/jobs/${n}/suspend`)), 'suspend'),
  ];
}

export async function list(view, signal) {
  let all = [];
  const table = new VirtualList(
    [['name', 'Job'], ['sched', 'Schedule'], ['next', 'Next fire'], ['state', 'State'], ['act', '']],
    (j) => h('div', { 'data-job': j.name },
      h('span', { class: 'c-name' }, h('a', { href: `#/jobs/${api.enc(j.name)}` }, j.name)),
      h('span', { class: 'c-sched' }, `${j.schedule} (${j.time_zone})`),
      h('span', { class: 'c-next' }, j.suspend ? 'suspended' : (j.next_fire_local || when(j.next_fire))),
      h('span', { class: 'c-state' }, j.active_runs ? `${j.active_runs} running` : 'idle'),
      h('span', { class: 'c-act' }, ...jobActions(j, () => load()))),
    34, 640);
  const filter = h('input', { type: 'search', placeholder: 'filter by name', class: 'filter' });
  const count = h('span', { class: 'count' });
  const show = () => {
    const f = filter.value.trim();
    const items = f ? all.filter((j) => j.name.includes(f)) : all;
    count.textContent = `${items.length} of ${all.length}`;
    table.set(items);
  };
  filter.addEventListener('input', show);
  const load = async () => {
    all = await api.get('/v1/jobs', signal);
    all.sort((a, b) => String(a.next_fire || '~').localeCompare(String(b.next_fire || '~')));
    show();
  };
  view.replaceChildren(h('h1', {}, 'Jobs'), h('div', { class: 'bar' }, filter, count), table.el);
  await load();
  while (!signal.aborted) {
    await new Promise((res) => setTimeout(res, 5000));
    try { await load(); } catch (e) { if (signal.aborted || e.status === 401) return; }
  }
}

export async function detail(view, signal, name) {
  const path = `/v1/jobs/${api.enc(name)}`;
  const head = h('div', {});
  const runs = h('tbody', { id: 'runs' });
  view.replaceChildren(h('h1', {}, 'Job ', h('span', { class: 'name' }, name)), head,
    h('section', { class: 'card' }, h('h2', {}, 'Runs (newest first)'),
      h('table', { class: 'runs' },
        h('thead', {}, h('tr', {}, ['Run', 'Trigger', 'Scheduled', 'State', 'Started', 'Finished', 'Exit', 'Container']
          .map((t) => h('th', {}, t)))),
        runs)));
  const load = async () => {
    const j = await api.get(path, signal);
    head.replaceChildren(
      h('p', {}, `${j.schedule} (${j.time_zone}) · `,
        j.suspend ? 'suspended' : `next fire ${j.next_fire_local || when(j.next_fire)}`,
        ` · concurrency ${j.concurrency} · missed runs ${j.missed}`),
      h('div', { class: 'bar' }, ...jobActions(j, () => load().catch(() => {}))));
    const rs = await api.get(`${path}/runs?limit=50`, signal);
    runs.replaceChildren(...rs.map((r) => h('tr', { 'data-run': r.id, class: `run st-${r.state}` },
      h('td', {}, r.id), h('td', {}, r.trigger), h('td', {}, when(r.scheduled_at)),
      h('td', { class: 'run-state' }, r.state), h('td', {}, when(r.started_at)),
      h('td', {}, when(r.finished_at)), h('td', {}, r.exit_code ?? '–'),
      h('td', {}, r.container_id
        ? h('a', { href: `#/containers/${api.enc(r.container_id)}` }, r.container_name) : '–'))));
  };
  await load();
  while (!signal.aborted) {
    await new Promise((res) => setTimeout(res, 2000));
    try { await load(); } catch (e) { if (signal.aborted || e.status === 401) return; }
  }
}
