// File events as they are logged (the log itself, long-polled: no subscription is consumed)
// and the NFS exports with their client rules and live throughput.
import * as api from './api.js';
import { h, when, rate } from './ui.js';
import { scrape, Rates } from './home.js';

const KEEP = 300;

export async function events(view, signal) {
  const rows = h('tbody', { id: 'events' });
  const status = h('p', { class: 'count' }, 'reading the event log…');
  view.replaceChildren(h('h1', {}, 'File events'), status,
    h('section', { class: 'card' }, h('table', { class: 'events' },
      h('thead', {}, h('tr', {}, ['Seq', 'Time', 'Watch', 'Kind', 'Path', 'Size'].map((t) => h('th', {}, t)))),
      rows)));
  // Catch up with the log's end without drawing it all, then wait for what comes.
  let after = 0;
  let first = true;
  let seen = 0;
  while (!signal.aborted) {
    let batch;
    try {
      batch = await api.get(`/v1/events?after=${after}&max=1000&wait=${first ? 0 : 25}`, signal);
    } catch (e) {
      if (signal.aborted || e.status === 401) return;
      await new Promise((res) => setTimeout(res, 3000));
      continue;
    }
    if (batch.length) after = batch[batch.length - 1].seq;
    seen += batch.length;
    const draw = first ? batch.slice(-KEEP) : batch;
    for (const ev of draw) {
      rows.prepend(h('tr', { class: `ev k-${ev.kind}` },
        h('td', {}, ev.seq), h('td', {}, when(ev.time)), h('td', {}, ev.watch), h('td', {}, ev.kind),
        h('td', { class: 'path' }, ev.old_path ? `${ev.old_path} → ${ev.path}` : ev.path),
        h('td', {}, ev.size ?? '')));
    }
    while (rows.childElementCount > KEEP) rows.lastElementChild.remove();
    if (batch.length < 1000) first = false;
    status.textContent = `${seen} events since the page opened (the newest ${KEEP} shown; live)`;
  }
}

export async function exports(view, signal) {
  const list = await api.get('/v1/exports', signal);
  const info = await api.get('/v1/info', signal);
  const live = new Map();
  const body = h('tbody', {});
  const draw = () => body.replaceChildren(...list.map((x) => {
    const l = live.get(x.name) || {};
    return h('tr', { 'data-export': x.name },
      h('td', {}, x.name), h('td', {}, `/${x.path}`),
      h('td', {}, (x.clients || []).map((c) => `${c.match} (${c.access})`).join(', ') || 'none'),
      h('td', {}, `${x.squash} → ${x.anon_uid}:${x.anon_gid}`),
      h('td', {}, `${rate(l.read)} / ${rate(l.write)}`));
  }));
  view.replaceChildren(h('h1', {}, 'NFS exports'),
    h('p', {}, info.nfs_listen ? `The gateway serves on ${info.nfs_listen}.` : 'The gateway is not serving (no nfs_listen).'),
    h('section', { class: 'card' }, h('table', { class: 'exports' },
      h('thead', {}, h('tr', {}, ['Export', 'Path in the array', 'Clients', 'Squash', 'Read / write'].map((t) => h('th', {}, t)))),
      body)));
  draw();
  const rates = new Rates();
  while (!signal.aborted) {
    try {
      const m = await scrape(signal);
      const r = rates.step(performance.now(), m.counters);
      for (const x of list) {
        live.set(x.name, { read: r.get(`inarray_nfs_read_bytes_total|${x.name}`), write: r.get(`inarray_nfs_written_bytes_total|${x.name}`) });
      }
      draw();
    } catch (e) {
      if (signal.aborted || e.status === 401) return;
    }
    await new Promise((res) => setTimeout(res, 2000));
  }
}
