// Agents (#/agents, auditors): the inventory with each agent's state, revoke and lift for
// admins (after a confirmation), and a chart of agents over time by state.

import {el, clear, badge, time, message, visible} from './dom.js';
import {get, post, atLeast} from './api.js';

const STATES = ['active', 'idle', 'expired', 'revoked'];
const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

// Stacked bars, one per point of the series, built as SVG elements (no markup strings).
export function chart(series) {
  const W = 600, H = 180, PAD = 24;
  const points = (series || []).slice(-200);
  const figure = el('figure', {class: 'chart'});
  if (!points.length) { figure.append(message('No history yet.', 'muted')); return figure; }
  const total = (p) => STATES.reduce((n, s) => n + (Number(p[s]) || 0), 0);
  const max = Math.max(1, ...points.map(total));
  const bw = (W - PAD) / points.length;
  const g = svg('svg', {viewBox: `0 0 ${W} ${H + PAD}`, role: 'img', class: 'chart-svg',
    'aria-label': 'agents over time by state'});
  g.append(svg('title', {}, 'Agents over time by state'));
  points.forEach((p, i) => {
    let y = H;
    for (const s of STATES) {
      const h = ((Number(p[s]) || 0) / max) * (H - 8);
      if (h <= 0) continue;
      y -= h;
      g.append(svg('rect', {x: (PAD + i * bw).toFixed(2), y: y.toFixed(2), width: Math.max(1, bw - 1).toFixed(2),
        height: h.toFixed(2), class: 'bar bar-' + s}, svg('title', {}, `${time(p.at_ms)}: ${p[s]} ${s}`)));
    }
  });
  g.append(svg('line', {x1: PAD, y1: H, x2: W, y2: H, class: 'axis'}),
    svg('text', {x: 0, y: 12, class: 'tick'}, String(max)),
    svg('text', {x: 0, y: H, class: 'tick'}, '0'),
    svg('text', {x: PAD, y: H + 18, class: 'tick'}, time(points[0].at_ms)),
    svg('text', {x: W, y: H + 18, class: 'tick', 'text-anchor': 'end'}, time(points[points.length - 1].at_ms)));
  figure.append(g, el('figcaption', {class: 'legend'},
    STATES.map((s) => el('span', {class: 'key key-' + s}, s))));
  return figure;
}

// The confirmation: what will be cut off, and why (the reason is recorded).
function confirmDialog(title, detail, action, run) {
  const reason = el('input', {type: 'text', name: 'reason', required: true, maxlength: 500,
    placeholder: 'reason (recorded)', 'aria-label': 'reason'});
  const result = el('p', {class: 'result', role: 'status'}, '');
  const ok = el('button', {type: 'submit', class: 'danger confirm'}, action);
  const cancel = el('button', {type: 'button', class: 'cancel'}, 'Cancel');
  const form = el('form', {method: 'dialog'}, el('h3', {}, title), el('p', {}, detail), reason,
    el('div', {class: 'buttons'}, ok, cancel), result);
  const dialog = el('dialog', {class: 'confirm-dialog'}, form);
  cancel.addEventListener('click', () => { dialog.close(); dialog.remove(); });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!reason.value.trim()) { result.textContent = 'A reason is required.'; return; }
    ok.disabled = true;
    try {
      result.textContent = await run(reason.value.trim());
      result.className = 'result ok';
      cancel.textContent = 'Close';
    } catch (e) {
      result.textContent = 'Refused: ' + e.message;
      result.className = 'result error';
      ok.disabled = false;
    }
  });
  document.body.append(dialog);
  dialog.showModal();
  reason.focus();
  return dialog;
}

export async function agents(view, cleanup) {
  const data = await get('/v1/agents');
  const rows = data.agents || [];
  const admin = atLeast('admin');
  const reload = () => { clear(view); return agents(view, cleanup); };
  const counts = Object.fromEntries(STATES.map((s) => [s, rows.filter((a) => a.status === s).length]));
  view.append(el('h2', {}, 'Agents'),
    el('p', {class: 'counts'}, STATES.map((s) => el('span', {class: 'count'}, badge(s), ` ${counts[s]}`))),
    chart(data.series));
  if (!rows.length) { view.append(message('No agent on record.', 'muted')); return; }
  const actions = (a) => {
    if (!admin) return '';
    const who = `${a.issuer}#${a.subject}`;
    if (a.status === 'revoked' && a.revoked) {
      const r = a.revoked;
      const target = [r.issuer && r.subject ? `${r.issuer}#${r.subject}` : r.subject, r.workload && `workload ${r.workload}`].filter(Boolean).join(', ') || 'everyone';
      return el('button', {type: 'button', class: 'lift', onclick: () => {
        const d = confirmDialog('Lift the revocation?', visible(`${target} may connect again (revoked by ${r.by}: ${r.reason}).`), 'Lift',
          async (reason) => {
            const out = await post('/v1/revocations/lift', {subject: r.subject ?? undefined, issuer: r.issuer ?? undefined, workload: r.workload ?? undefined, reason});
            return `Lifted (${out.lifted ?? 0}).`;
          });
        d.addEventListener('close', reload);
      }}, 'Lift');
    }
    return el('button', {type: 'button', class: 'revoke danger', onclick: () => {
      const d = confirmDialog('Revoke this agent?', visible(`${who} (workload ${a.workload}) is refused from now on and its ${a.live_sessions} live session(s) end now.`), 'Revoke',
        async (reason) => {
          const out = await post('/v1/revocations', {issuer: a.issuer, subject: a.subject, reason});
          return `Revoked: ${out.ended_sessions} live session(s) ended.`;
        });
      d.addEventListener('close', reload);
    }}, 'Revoke…');
  };
  view.append(el('div', {class: 'table-wrap'}, el('table', {class: 'list agents'},
    el('thead', {}, el('tr', {}, ['state', 'identity', 'workload', 'first seen', 'last seen', 'token expires', 'targets', 'privileged', 'sessions', ''].map((h) => el('th', {}, h)))),
    el('tbody', {}, rows.map((a) => el('tr', {'data-subject': a.subject, 'data-status': a.status},
      el('td', {'data-label': 'state'}, badge(a.status)),
      el('td', {'data-label': 'identity'}, visible(`${a.issuer}#${a.subject}`)),
      el('td', {'data-label': 'workload'}, visible(a.workload)),
      el('td', {'data-label': 'first seen'}, time(a.first_seen_ms)),
      el('td', {'data-label': 'last seen'}, time(a.last_seen_ms)),
      el('td', {'data-label': 'token expires'}, time(a.token_expires_ms)),
      el('td', {'data-label': 'targets'}, visible((a.targets || []).join(', '))),
      el('td', {'data-label': 'privileged'}, String(a.privileged_actions ?? 0)),
      el('td', {'data-label': 'sessions'}, `${a.live_sessions ?? 0} live / ${a.sessions ?? 0}`),
      el('td', {'data-label': ''}, actions(a))))))));
}
