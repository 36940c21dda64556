// A terminal into a container: an exec (`sh`, with a terminal) started over the exec WebSocket
// (GET /v1/execs/{id}/start with an upgrade), drawn by xterm.js (vendored: vendor/README.md).
import * as api from './api.js';
import { h, toast } from './ui.js';

// xterm.js writes its computed rules (theme, cell size) into <style> elements, which this
// console's Content-Security-Policy (style-src 'self', no inline styles) refuses. Its style
// elements are given constructed style sheets instead (adoptedStyleSheets are not inline
// styles): the element it appends stays empty and hidden, its text goes to the sheet.
let patched = false;
function adoptXtermStyles() {
  if (patched) return;
  patched = true;
  const create = document.createElement.bind(document);
  document.createElement = (tag, opts) => {
    if (String(tag).toLowerCase() !== 'style') return create(tag, opts);
    const holder = create('span', opts);
    holder.hidden = true;
    const sheet = new CSSStyleSheet();
    let text = '';
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
    Object.defineProperty(holder, 'textContent', {
      get: () => text,
      set: (v) => { text = String(v ?? ''); sheet.replaceSync(text); },
    });
    const remove = holder.remove.bind(holder);
    holder.remove = () => {
      document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
      remove();
    };
    return holder;
  };
}

export async function terminal(view, signal, id) {
  adoptXtermStyles();
  const { Terminal } = await import('./xterm.mjs');
  const c = await api.get(`/v1/containers/${api.enc(id)}`, signal);
  const box = h('div', { class: 'term', id: 'term' });
  const status = h('span', { class: 'count' }, 'starting sh…');
  view.replaceChildren(
    h('h1', {}, 'Terminal in ', h('a', { href: `#/containers/${api.enc(c.id)}`, class: 'name' }, c.name)),
    h('p', {}, status), box);
  const term = new Terminal({ rows: 24, cols: 100, convertEol: false, cursorBlink: true, fontSize: 14 });
  term.open(box);
  const exec = await api.post(`/v1/containers/${api.enc(c.id)}/exec`, {
    command: ['sh'], tty: true, stdin: true, env: ['TERM=xterm-256color'],
  });
  const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${window.location.host}/v1/execs/${api.enc(exec.id)}/start`);
  ws.binaryType = 'arraybuffer';
  const encoder = new TextEncoder();
  const resize = () => api.post(`/v1/execs/${api.enc(exec.id)}/resize`, { rows: term.rows, cols: term.cols })
    .catch(() => {});
  ws.onopen = () => { status.textContent = `exec ${exec.id}: connected`; resize(); term.focus(); };
  ws.onmessage = (m) => term.write(new Uint8Array(m.data));
  ws.onclose = () => { status.textContent = `exec ${exec.id}: ended`; };
  ws.onerror = () => toast('the terminal connection failed', true);
  const input = term.onData((d) => { if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(d)); });
  const sized = term.onResize(resize);
  signal.addEventListener('abort', () => {
    input.dispose();
    sized.dispose();
    ws.close();
    term.dispose();
  });
}
