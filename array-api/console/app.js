// The console's shell: sign-in, navigation (hash routes: nothing secret in a URL) and the page
// of the current route. Each page runs until its AbortSignal fires (another route).
import * as api from './api.js';
import { home } from './home.js';
import * as containers from './containers.js';
import * as jobs from './jobs.js';
import { events, exports } from './activity.js';
import { terminal } from './terminal.js';
import { h } from './ui.js';

const $ = (id) => document.getElementById(id);
let current = null;

function route() {
  const parts = (window.location.hash.replace(/^#\/?/, '') || '').split('/').map(decodeURIComponent);
  const [a, b, c] = parts;
  if (a === 'containers' && b && c === 'exec') return (v, s) => terminal(v, s, b);
  if (a === 'containers' && b) return (v, s) => containers.detail(v, s, b);
  if (a === 'containers') return containers.list;
  if (a === 'jobs' && b) return (v, s) => jobs.detail(v, s, b);
  if (a === 'jobs') return jobs.list;
  if (a === 'events') return events;
  if (a === 'exports') return exports;
  return home;
}

function show() {
  if (current) current.abort();
  current = new AbortController();
  const view = $('view');
  view.replaceChildren(h('p', { class: 'count' }, 'loading…'));
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('here', window.location.hash.startsWith(a.getAttribute('href')) && a.getAttribute('href') !== '#/'
      || (a.getAttribute('href') === '#/' && (window.location.hash === '' || window.location.hash === '#/')));
  }
  const signal = current.signal;
  route()(view, signal).catch((e) => {
    if (signal.aborted || e.status === 401) return;
    view.replaceChildren(h('p', { class: 'error' }, e.message));
  });
}

function signedIn(who) {
  $('signin').hidden = true;
  $('nav').hidden = false;
  $('signout').hidden = false;
  $('who').textContent = who ? `${who.who} (${who.scope})` : '';
  document.body.dataset.signedIn = 'yes';
  show();
}

function signedOut() {
  if (current) current.abort();
  $('view').replaceChildren();
  $('nav').hidden = true;
  $('signout').hidden = true;
  $('who').textContent = '';
  $('signin').hidden = false;
  document.body.dataset.signedIn = 'no';
  $('token').focus();
}

api.setOnSignedOut(signedOut);

$('signin').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('token');
  const token = input.value.trim();
  input.value = '';
  $('signin-error').textContent = '';
  try {
    signedIn(await api.signIn(token));
  } catch (e) {
    $('signin-error').textContent = e.message;
  }
});

$('signout').addEventListener('click', async () => {
  await api.signOut();
  signedOut();
});

window.addEventListener('hashchange', () => { if (document.body.dataset.signedIn === 'yes') show(); });

// Already signed in (a session cookie from before)? /v1/info answers; a 401 shows the form.
api.get('/v1/info').then(() => signedIn(null)).catch(() => signedOut());
