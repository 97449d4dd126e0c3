// The approvals inbox (#/inbox) and one request's page (#/approvals/{id}): pending requests
// first, kept live by the event stream, each with everything the approver decides on.

import {el, clear, code, facts, badge, time, span, message, visible} from './dom.js';
import {get, post, on, me} from './api.js';

function approvalsOf(r) {
  const seen = new Set();
  for (const v of r.votes || []) {
    if (v.verdict === 'approve') seen.add(v.issuer + '#' + v.approver);
  }
  return seen.size;
}

// The request's card; `onChange(updated)` when this approver decided it.
export function card(r, onChange) {
  const pending = r.state === 'pending';
  const left = el('span', {class: 'left', 'data-expires': r.expires_ms}, '');
  showLeft(left, Date.now());
  const head = el('div', {class: 'card-head'},
    badge(r.state),
    el('a', {href: '#/approvals/' + encodeURIComponent(r.id), class: 'id'}, r.id),
    pending ? left : el('span', {class: 'left'}, r.decided_ms ? 'decided ' + time(r.decided_ms) : ''));
  const agent = `${r.issuer}#${r.subject}`;
  const where = [r.pod, r.cgroup].filter(Boolean).join(' · ');
  const parts = [
    ['agent', agent],
    ['workload', r.workload],
    ['pod / cgroup', where || null],
    ['target', r.database ? `${r.target} (${r.database})` : r.target],
    ['rule', r.rule],
    ['class', r.class],
    ['protocol', r.protocol],
    ['requested', time(r.created_ms)],
    ['quorum', `${approvalsOf(r)} of ${r.quorum} from ${(r.approvers || []).join(', ')}`],
  ];
  if (r.trial_rows !== undefined && r.trial_rows !== null) {
    parts.push(['trial run', `${r.trial_rows} row${r.trial_rows === 1 ? '' : 's'} (rolled back)`]);
  }
  if (r.reason) parts.push(['reason', r.reason]);
  const body = [head, code(r.statement, 'code statement'), facts(parts)];
  if (Array.isArray(r.params) && r.params.length) {
    body.push(el('div', {class: 'params'}, el('h4', {}, 'parameters'),
      el('ol', {}, r.params.map((p) => el('li', {}, p === null ? el('em', {}, 'NULL') : visible(p))))));
  }
  const diff = r.rbac_diff ?? r.diff;
  if (diff) {
    body.push(el('div', {class: 'diff'}, el('h4', {}, 'RBAC change'),
      code(typeof diff === 'string' ? diff : JSON.stringify(diff, null, 2), 'code diff')));
  }
  if ((r.votes || []).length) {
    body.push(el('ul', {class: 'votes'}, r.votes.map((v) => el('li', {},
      `${v.verdict} by ${v.approver} (${v.via}) at ${time(v.at_ms)}`, v.reason ? ` — ${visible(v.reason)}` : ''))));
  }
  if (pending) body.push(decide(r, onChange));
  return el('article', {class: 'card state-' + visible(r.state), 'data-id': r.id}, body);
}

// Approve, or deny with a reason (required: the agent reads it as its error).
function decide(r, onChange) {
  const result = el('p', {class: 'result', role: 'status'}, '');
  const reason = el('input', {type: 'text', class: 'reason', name: 'reason', maxlength: 500,
    placeholder: 'reason (required to deny)', 'aria-label': 'reason'});
  const approve = el('button', {type: 'button', class: 'approve'}, 'Approve');
  const deny = el('button', {type: 'button', class: 'deny', disabled: true}, 'Deny');
  reason.addEventListener('input', () => { deny.disabled = reason.value.trim() === ''; });
  const act = async (verdict) => {
    const text = reason.value.trim();
    if (verdict === 'deny' && !text) { result.textContent = 'A reason is required to deny.'; return; }
    approve.disabled = deny.disabled = true;
    result.textContent = verdict === 'approve' ? 'Approving…' : 'Denying…';
    try {
      const updated = await post(`/v1/approvals/${encodeURIComponent(r.id)}/${verdict}`,
        text ? {reason: text} : {});
      result.textContent = `${verdict === 'approve' ? 'Approved' : 'Denied'}: the request is ${updated.state}.`;
      result.className = 'result ok';
      if (onChange) onChange(updated);
    } catch (e) {
      result.textContent = `Not ${verdict === 'approve' ? 'approved' : 'denied'}: ${e.message}`;
      result.className = 'result error';
      approve.disabled = false;
      deny.disabled = reason.value.trim() === '';
    }
  };
  approve.addEventListener('click', () => act('approve'));
  deny.addEventListener('click', () => act('deny'));
  return el('div', {class: 'decide'}, reason, el('div', {class: 'buttons'}, approve, deny), result);
}

// Counts down every pending request's time left (one timer for the page).
export function tick(root) {
  const now = Date.now();
  for (const e of root.querySelectorAll('[data-expires]')) showLeft(e, now);
}

function showLeft(e, now) {
  const left = Number(e.getAttribute('data-expires')) - now;
  e.textContent = left > 0 ? `${span(left)} left` : 'expiring';
  e.classList.toggle('soon', left < 60000);
}

function order(a, b) {
  const pa = a.state === 'pending' ? 0 : 1, pb = b.state === 'pending' ? 0 : 1;
  if (pa !== pb) return pa - pb;
  return pa === 0 ? a.expires_ms - b.expires_ms : (b.created_ms - a.created_ms);
}

export async function inbox(view, cleanup) {
  const list = el('div', {class: 'cards'});
  const note = el('p', {class: 'muted'}, '');
  view.append(el('h2', {}, 'Approvals'), note, list);
  // id -> {r, key, node}: a card is rebuilt only when its request changed, so a reason being
  // typed into another card survives live updates.
  const byId = new Map();
  const put = (r) => {
    const key = JSON.stringify(r);
    const had = byId.get(r.id);
    if (had && had.key === key) return;
    byId.set(r.id, {r, key, node: card(r, put)});
    render();
  };
  const render = () => {
    const all = [...byId.values()].sort((a, b) => order(a.r, b.r));
    const pending = all.filter((c) => c.r.state === 'pending').length;
    note.textContent = `${pending} pending` + (me ? ` for ${me.name} (${(me.groups || []).join(', ')})` : '');
    if (!all.length) { clear(list).append(message('Nothing waits for you.', 'muted')); return; }
    const empty = list.querySelector('.msg');
    if (empty) empty.remove();
    all.forEach((c, i) => { if (list.children[i] !== c.node) list.insertBefore(c.node, list.children[i] || null); });
    tick(list);
  };
  // Events that arrive while the list loads are kept, and win over the list's older copy.
  cleanup.push(on('approval', put));
  const data = await get('/v1/approvals?state=all');
  for (const r of data.requests || []) if (!byId.has(r.id)) put(r);
  if (data.truncated) view.append(message('Only the newest requests are shown.', 'muted'));
  render();
  const timer = setInterval(() => tick(list), 1000);
  cleanup.push(() => clearInterval(timer));
}

export async function approval(view, cleanup, id) {
  const box = el('div', {class: 'cards'});
  view.append(el('p', {}, el('a', {href: '#/inbox'}, '← inbox')), box);
  const show = (r) => { clear(box).append(card(r, show)); tick(box); };
  cleanup.push(on('approval', (r) => { if (r.id === id) show(r); }));
  show(await get('/v1/approvals/' + encodeURIComponent(id)));
  const timer = setInterval(() => tick(box), 1000);
  cleanup.push(() => clearInterval(timer));
}
