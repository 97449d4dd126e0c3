// The console's shell: who is signed in, the navigation their role allows, and the
// client-side routes (#/inbox, #/approvals/{id}, #/sessions, #/sessions/{id}, #/agents,
// #/audit). Each view draws into <main> and leaves its timers and listeners in `cleanup`.

import {el, clear, message, visible} from './dom.js';
import {loadMe, me, atLeast, live, on, signOut, signIn, ApiError} from './api.js';
import {inbox, approval} from './inbox.js';
import {list as sessions, replay} from './sessions.js';
import {agents} from './agents.js';
import {audit} from './audit.js';

const main = document.getElementById('view');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const liveDot = document.getElementById('live');
let cleanup = [];

const ROUTES = [
  [/^\/inbox$/, 'approver', (v, c) => inbox(v, c)],
  [/^\/approvals\/([^/]+)$/, 'approver', (v, c, m) => approval(v, c, decodeURIComponent(m[1]))],
  [/^\/sessions$/, 'auditor', (v, c, m, q) => sessions(v, c, q)],
  [/^\/sessions\/([^/]+)$/, 'auditor', (v, c, m) => replay(v, c, decodeURIComponent(m[1]))],
  [/^\/agents$/, 'auditor', (v, c) => agents(v, c)],
  [/^\/audit$/, 'auditor', (v, c) => audit(v, c)],
];

function drawNav() {
  clear(nav);
  const here = (location.hash.slice(1) || '/inbox').split('?')[0];
  for (const [href, label, role] of [['#/inbox', 'Inbox', 'approver'], ['#/sessions', 'Sessions', 'auditor'],
    ['#/agents', 'Agents', 'auditor'], ['#/audit', 'Audit', 'auditor']]) {
    if (!atLeast(role)) continue;
    nav.append(el('a', {href, 'aria-current': here.startsWith(href.slice(1)) ? 'page' : false}, label));
  }
}

async function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  clear(main);
  drawNav();
  const [path, q] = (location.hash.slice(1) || '/inbox').split('?');
  const params = new URLSearchParams(q || '');
  for (const [re, role, view] of ROUTES) {
    const m = re.exec(path);
    if (!m) continue;
    if (!atLeast(role)) {
      main.append(message(`This page is for ${role}s; you are signed in as ${me.role}.`, 'error'));
      return;
    }
    try {
      await view(main, cleanup, m, params);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      const text = e instanceof ApiError && e.status === 404 ? 'Not found (or not yours to see).' : e.message;
      main.append(message(text, 'error'));
    }
    return;
  }
  main.append(message('No such page.', 'error'));
}

async function start() {
  try {
    await loadMe();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) main.append(message('The console could not start: ' + e.message, 'error'));
    return;
  }
  clear(who).append(el('span', {class: 'name'}, visible(me.name || me.subject)), ' ',
    el('span', {class: 'role'}, visible(me.role)));
  document.getElementById('signout').addEventListener('click', signOut);
  // Back to the page the person asked for before signing in.
  let after = null;
  try { after = sessionStorage.getItem('agentgate.after'); sessionStorage.removeItem('agentgate.after'); } catch (_) { /* none */ }
  if (after && after.startsWith('#/') && !location.hash) location.replace(after);
  let lost = null;
  on('status', (up) => {
    liveDot.className = up ? 'live on' : 'live off';
    liveDot.textContent = up ? 'live' : 'reconnecting';
    // The stream ends when the session does: find out, and go to the sign-in if so.
    if (!up && !lost) lost = setTimeout(() => { lost = null; loadMe().catch(() => {}); }, 2000);
  });
  on('resync', route);
  live();
  window.addEventListener('hashchange', route);
  route();
}

start();
