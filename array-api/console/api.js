// The console's one way to the daemon: the public REST API, with the session cookie the
// sign-in set (HttpOnly: this code never sees it). Every request carries X-Inarray-Console,
// which the daemon requires of cookie-authenticated requests that change something (CSRF).

const CSRF = { 'X-Inarray-Console': '1' };

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Called when the session is gone (401): the app shows the sign-in form. */
export let onSignedOut = () => {};
export function setOnSignedOut(f) { onSignedOut = f; }

async function failure(r) {
  let msg = `${r.status} ${r.statusText}`;
  try {
    const j = await r.json();
    if (j && j.error && j.error.message) msg = j.error.message;
  } catch (_) { /* not JSON */ }
  if (r.status === 401) onSignedOut();
  return new ApiError(r.status, msg);
}

export async function request(method, path, body, signal) {
  const headers = { ...CSRF };
  const init = { method, headers, credentials: 'same-origin', signal, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (!r.ok) throw await failure(r);
  return r;
}

export async function get(path, signal) {
  return (await request('GET', path, undefined, signal)).json();
}
export async function post(path, body) {
  const r = await request('POST', path, body);
  return r.status === 204 ? null : r.json();
}
export async function del(path) {
  await request('DELETE', path);
}
export async function text(path, signal) {
  return (await request('GET', path, undefined, signal)).text();
}

/** Reads a streamed reply chunk by chunk as text until it ends or `signal` aborts. */
export async function stream(path, signal, onText) {
  const r = await request('GET', path, undefined, signal);
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onText(dec.decode(value, { stream: true }));
    }
  } finally {
    reader.releaseLock();
  }
}

/** Streamed JSON lines (stats with stream=true). */
export async function jsonLines(path, signal, onValue) {
  let buf = '';
  await stream(path, signal, (t) => {
    buf += t;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) onValue(JSON.parse(line));
    }
  });
}

/** Signs in with a token: the reply sets the session cookie; the token is not kept. */
export async function signIn(token) {
  const r = await fetch('/ui/session', {
    method: 'POST',
    credentials: 'same-origin',
    headers: { ...CSRF, Authorization: `Bearer ${token}` },
  });
  if (!r.ok) {
    let msg = `${r.status}`;
    try { msg = (await r.json()).error.message; } catch (_) { /* keep */ }
    throw new ApiError(r.status, msg);
  }
  return r.json();
}

export async function signOut() {
  await fetch('/ui/session', { method: 'DELETE', credentials: 'same-origin', headers: CSRF });
}

/**
 * The Prometheus text of /metrics as samples: [{name, labels, value}]. Only the families the
 * console draws are kept (the rest is skipped while parsing).
 */
export function parseMetrics(body, wanted) {
  const out = [];
  for (const line of body.split('\n')) {
    if (!line || line[0] === '#') continue;
    const brace = line.indexOf('{');
    const space = line.lastIndexOf(' ');
    const name = line.slice(0, brace >= 0 ? brace : line.indexOf(' '));
    if (!wanted(name)) continue;
    const labels = {};
    if (brace >= 0) {
      const end = line.lastIndexOf('}');
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      let m;
      const inner = line.slice(brace + 1, end);
      while ((m = re.exec(inner)) !== null) {
        labels[m[1]] = m[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
      }
    }
    out.push({ name, labels, value: Number(line.slice(space + 1)) });
  }
  return out;
}

export const enc = encodeURIComponent;
