// Sessions (#/sessions, auditors): the list with its filters, and the replay of one session
// (#/sessions/{id}): SQL and HTTP as a timeline of what the agent sent and saw (masked as it
// saw it), SSH and kubectl exec as a terminal recording.

import {el, clear, code, facts, badge, time, span, message, visible} from './dom.js';
import {get, query, ApiError} from './api.js';
import {parseCast, Player} from './term.js';

const FILTERS = ['identity', 'workload', 'target', 'protocol', 'status', 'since', 'until', 'denied', 'approvals'];

function msOf(local) {
  if (!local) return '';
  const t = new Date(local).getTime();
  return isNaN(t) ? '' : t;
}

export async function list(view, cleanup, params) {
  const input = (name, attrs) => el('input', Object.assign({name, 'aria-label': name, value: params.get(name) || ''}, attrs));
  const form = el('form', {class: 'filters'},
    el('label', {}, 'identity ', input('identity', {type: 'text', placeholder: 'subject or issuer#subject'})),
    el('label', {}, 'workload ', input('workload', {type: 'text'})),
    el('label', {}, 'target ', input('target', {type: 'text'})),
    el('label', {}, 'protocol ', el('select', {name: 'protocol', 'aria-label': 'protocol'},
      ['', 'postgres', 'ssh', 'http', 'tcp'].map((p) => el('option', {value: p, selected: params.get('protocol') === p}, p || 'any')))),
    el('label', {}, 'state ', el('select', {name: 'status', 'aria-label': 'state'},
      [['', 'any'], ['live', 'live'], ['closed', 'ended']].map(([v, t]) => el('option', {value: v, selected: params.get('status') === v}, t)))),
    el('label', {}, 'since ', input('since', {type: 'datetime-local'})),
    el('label', {}, 'until ', input('until', {type: 'datetime-local'})),
    el('label', {class: 'check'}, el('input', {type: 'checkbox', name: 'denied', checked: params.get('denied') === '1'}), ' with denials'),
    el('label', {class: 'check'}, el('input', {type: 'checkbox', name: 'approvals', checked: params.get('approvals') === '1'}), ' with approvals'),
    el('button', {type: 'submit'}, 'Filter'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const name of FILTERS) {
      const f = form.elements[name];
      const v = f.type === 'checkbox' ? (f.checked ? '1' : '') : f.value.trim();
      if (v) q.set(name, v);
    }
    location.hash = '#/sessions' + (q.toString() ? '?' + q : '');
  });
  const table = el('div', {class: 'table-wrap'});
  const more = el('p', {}, '');
  view.append(el('h2', {}, 'Sessions'), form, table, more);

  const api = {
    identity: params.get('identity'), workload: params.get('workload'), target: params.get('target'),
    protocol: params.get('protocol'), status: params.get('status'), since_ms: msOf(params.get('since')), until_ms: msOf(params.get('until')),
    denied: params.get('denied') === '1' ? 1 : '', approvals: params.get('approvals') === '1' ? 1 : '',
    limit: 100, before: params.get('before'),
  };
  const data = await get('/v1/sessions' + query(api));
  const rows = data.sessions || [];
  if (!rows.length) { table.append(message('No sessions match.', 'muted')); return; }
  table.append(el('table', {class: 'list sessions'},
    el('thead', {}, el('tr', {}, ['started', 'protocol', 'identity', 'workload', 'target', 'statements', 'denied', 'ended by'].map((h) => el('th', {}, h)))),
    el('tbody', {}, rows.map((s) => el('tr', {},
      el('td', {'data-label': 'started'}, el('a', {href: '#/sessions/' + encodeURIComponent(s.session)}, time(s.started_ms))),
      el('td', {'data-label': 'protocol'}, visible(s.protocol || '')),
      el('td', {'data-label': 'identity'}, visible(`${s.issuer || ''}#${s.subject || ''}`)),
      el('td', {'data-label': 'workload'}, visible(s.workload || '')),
      el('td', {'data-label': 'target'}, visible(s.target || '')),
      el('td', {'data-label': 'statements'}, String(s.statements ?? '')),
      el('td', {'data-label': 'denied'}, String(s.denied ?? '')),
      el('td', {'data-label': 'ended by'}, s.ended_ms ? visible(s.ended_by || 'client') : badge('live')))))));
  if (data.truncated && rows.length) {
    const q = new URLSearchParams(params);
    q.set('before', String(rows[rows.length - 1].started_ms));
    more.append(el('a', {href: '#/sessions?' + q}, 'Older sessions →'));
  }
}

// One timeline event as the agent saw it: the record's fields with `kind` the console's
// (start, statement/command/request, approval, denial, output, end, ...) and `record_kind`
// the record's own.
function event(e, start) {
  const b = e;
  const at = el('span', {class: 'at'}, '+' + span((e.at_ms || start) - start));
  const kind = String(e.kind || '');
  const item = (cls, ...rest) => el('li', {class: 'ev ev-' + cls, 'data-kind': kind}, at, ...rest);
  switch (kind) {
    case 'start': case 'session_open':
      return item('open', el('strong', {}, 'opened '), visible(`${b.subject || ''} (${b.issuer || ''}) from ${b.workload || ''} to ${b.target || ''}`));
    case 'statement': case 'command': case 'request': {
      const intent = e.record_kind === 'statement_intent';
      const decision = b.decision ? badge(b.decision) : null;
      const parts = [el('div', {class: 'ev-head'}, el('strong', {}, b.statement_kind ? visible(b.statement_kind) : kind), ' ', decision,
        b.class ? el('span', {class: 'muted'}, ' ' + visible(b.class)) : '',
        b.rule ? el('span', {class: 'muted'}, ' by ' + visible(b.rule)) : ''),
      code(b.text ?? b.statement ?? b.command ?? (b.method ? `${b.method} ${b.path || b.url || ''}` : ''), 'code statement')];
      if (Array.isArray(b.params) && b.params.length) {
        parts.push(el('p', {class: 'params'}, 'parameters: ', visible(JSON.stringify(b.params))));
      }
      if (intent) parts.push(message('Sent; the outcome is not on record.', 'warn'));
      else if (b.error) parts.push(el('p', {class: 'outcome error'}, visible(`error ${b.error_code || ''} ${b.error}`)));
      else if (b.status !== undefined) parts.push(el('p', {class: 'outcome'}, visible(`status ${b.status}`)));
      else if (b.rows !== undefined) parts.push(el('p', {class: 'outcome'}, visible(`${b.rows} row${b.rows === 1 ? '' : 's'}`)));
      if (Array.isArray(b.results) && b.results.length) parts.push(results(b.results, b.results_cut));
      for (const k of ['request_body', 'response_body', 'body']) {
        if (typeof b[k] === 'string' && b[k]) parts.push(el('p', {class: 'muted'}, k.replace('_', ' ')), code(b[k], 'code body'));
      }
      return item('statement', ...parts);
    }
    case 'approval':
      return item('approval', el('strong', {}, 'approval '), visible(`${b.request || ''} ${b.event || ''} by ${b.actor || ''}`), b.reason ? ' — ' + visible(b.reason) : '');
    case 'denial':
      return item('denial', el('strong', {}, 'denied '), visible(b.reason || b.error || JSON.stringify(b)));
    case 'session_close': case 'end':
      return item('close', el('strong', {}, 'closed '), visible(`${b.bytes_up ?? '?'} bytes up, ${b.bytes_down ?? '?'} down` +
        (b.ended_by ? `; ended by ${b.ended_by}` : '') + (b.error ? `; error ${b.error}` : '')));
    case 'ssh_cast': case 'kube_cast': case 'output':
      return null; // played in the terminal above, not listed
    default:
      return item('other', el('strong', {}, visible(kind) + ' '), el('span', {class: 'muted'}, visible(JSON.stringify(b))));
  }
}

function results(rows, cut) {
  const cells = (r) => (Array.isArray(r) ? r : (r && typeof r === 'object' ? Object.values(r) : [r]));
  const head = rows[0] && typeof rows[0] === 'object' && !Array.isArray(rows[0]) ? Object.keys(rows[0]) : null;
  return el('div', {class: 'table-wrap'}, el('table', {class: 'results'},
    head ? el('thead', {}, el('tr', {}, head.map((h) => el('th', {}, visible(h))))) : null,
    el('tbody', {}, rows.map((r) => el('tr', {}, cells(r).map((c) =>
      el('td', {}, c === null ? el('em', {}, 'NULL') : visible(typeof c === 'string' ? c : JSON.stringify(c)))))),
    cut ? el('tr', {}, el('td', {class: 'muted'}, '… more rows not kept')) : null)));
}

export async function replay(view, cleanup, id) {
  const path = '/v1/sessions/' + encodeURIComponent(id);
  view.append(el('p', {}, el('a', {href: '#/sessions'}, '← sessions')));
  const data = await get(path + '/timeline');
  const events = data.events || [];
  const s = data.session || {};
  view.append(el('h2', {}, 'Session ', el('span', {class: 'id'}, visible(id))),
    facts([
      ['identity', `${s.issuer || ''}#${s.subject || ''}`], ['workload', s.workload], ['protocol', s.protocol],
      ['target', s.database ? `${s.target} (${s.database})` : s.target], ['started', time(s.started_ms)],
      ['ended', s.ended_ms ? time(s.ended_ms) : 'live'], ['ended by', s.ended_by], ['error', s.error],
    ]),
    el('p', {}, el('a', {href: path + '/export', download: `session-${id}.json`, class: 'button'}, 'Export (with hashes)')));
  const terminal = s.protocol === 'ssh' || events.some((e) => e.kind === 'output');
  if (terminal) {
    const box = el('section', {class: 'recording'}, el('h3', {}, 'Terminal'));
    view.append(box);
    try {
      const r = await fetch(path + '/cast', {credentials: 'same-origin', cache: 'no-store'});
      if (r.status === 404) box.append(message('No terminal recording for this session.', 'muted'));
      else if (!r.ok) throw new ApiError(r.status, null);
      else {
        const player = new Player(parseCast(await r.text()));
        box.append(player.node);
        cleanup.push(() => player.pause());
      }
    } catch (e) {
      box.append(message('The recording could not be played: ' + e.message, 'error'));
    }
  }
  const start = events.length ? events[0].at_ms || 0 : 0;
  const timeline = el('ol', {class: 'timeline'}, events.map((e) => event(e, start)).filter(Boolean));
  view.append(el('h3', {}, 'Timeline'), timeline.children.length ? timeline : message('Nothing on record.', 'muted'));
  // A long session comes in pages: the next one on request.
  let next = data.truncated ? data.next_after : null;
  if (next !== null && next !== undefined) {
    const more = el('button', {type: 'button', class: 'more'}, 'Later events');
    more.addEventListener('click', async () => {
      more.disabled = true;
      const page = await get(path + '/timeline' + query({after: next}));
      timeline.append(...(page.events || []).map((e) => event(e, start)).filter(Boolean));
      next = page.truncated ? page.next_after : null;
      if (next === null || next === undefined) more.remove(); else more.disabled = false;
    });
    view.append(more);
  }
}
