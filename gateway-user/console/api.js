// The console's only way to the gateway: its JSON API on the same origin, with the session
// cookie (same-origin requests carry it) and, on state-changing requests, the CSRF token
// that GET /v1/me gave.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.reason = (body && body.reason) || '';
  }
}

let csrf = null;
export let me = null;

// Not signed in (or the session ended): back to the sign-in, and to this page afterwards.
export function signIn() {
  try { sessionStorage.setItem('agentgate.after', location.hash); } catch (_) { /* private mode */ }
  location.assign('/console/login?next=' + encodeURIComponent('/console/'));
}

export async function call(method, path, body) {
  const headers = {Accept: 'application/json'};
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    if (csrf) headers['X-CSRF-Token'] = csrf;
  }
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin', cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  const type = r.headers.get('Content-Type') || '';
  if (type.startsWith('application/json')) {
    try { data = await r.json(); } catch (_) { data = null; }
  } else {
    data = await r.text();
  }
  if (r.status === 401) { signIn(); throw new ApiError(401, data); }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export const get = (path) => call('GET', path);
export const post = (path, body) => call('POST', path, body === undefined ? {} : body);

export async function loadMe() {
  me = await get('/v1/me');
  csrf = me.csrf_token || null;
  return me;
}

const ORDER = {approver: 0, auditor: 1, admin: 2};
export function atLeast(role) {
  return !!me && (ORDER[me.role] ?? -1) >= ORDER[role];
}

export async function signOut() {
  try { await post('/console/logout'); } catch (_) { /* the session may be gone already */ }
  location.assign('/console/');
}

// Query string from an object, leaving out empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '' && v !== false) q.set(k, String(v));
  }
  const s = q.toString();
  return s ? '?' + s : '';
}

// The live event stream (GET /v1/events): one EventSource for the page, handlers by type.
const handlers = {approval: new Set(), revocation: new Set(), status: new Set(), resync: new Set()};
let source = null;
export function on(type, fn) {
  handlers[type].add(fn);
  return () => handlers[type].delete(fn);
}
export function live() {
  if (source) return;
  source = new EventSource('/v1/events');
  source.addEventListener('open', () => handlers.status.forEach((f) => f(true)));
  source.addEventListener('error', () => handlers.status.forEach((f) => f(false)));
  // The server dropped events this page did not read in time: start over (a new stream,
  // and the views read their lists again).
  source.addEventListener('lagged', () => {
    source.close();
    source = null;
    handlers.status.forEach((f) => f(false));
    setTimeout(() => { live(); handlers.resync.forEach((f) => f()); }, 500);
  });
  for (const type of ['approval', 'revocation']) {
    source.addEventListener(type, (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      handlers[type].forEach((f) => f(data));
    });
  }
}
