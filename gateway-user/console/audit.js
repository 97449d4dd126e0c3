// Audit (#/audit, auditors): the record's hash chain as last verified, the last anchor, the
// central sink, and the policy in force (read-only).

import {el, facts, badge, time, message, visible, code} from './dom.js';
import {get} from './api.js';

function plain(obj) {
  if (!obj || typeof obj !== 'object') return message('none', 'muted');
  return facts(Object.entries(obj).map(([k, v]) => [k,
    /_ms$/.test(k) && typeof v === 'number' ? time(v) : (typeof v === 'object' && v !== null ? JSON.stringify(v) : v)]));
}

export async function audit(view) {
  const [a, p] = await Promise.all([get('/v1/audit'), get('/v1/policy')]);
  const chain = a.chain || {};
  view.append(el('h2', {}, 'Audit'),
    el('section', {class: 'panel'}, el('h3', {}, 'Record chain ', badge(chain.ok ? 'verified' : 'broken')),
      facts([['records', chain.records], ['checked', time(chain.checked_at_ms)], ['error', chain.error]])),
    el('section', {class: 'panel'}, el('h3', {}, 'Last anchor'), plain(a.anchor)),
    el('section', {class: 'panel'}, el('h3', {}, 'Central store'), plain(a.sink)));
  const rules = p.rules || [];
  view.append(el('section', {class: 'panel'}, el('h3', {}, 'Policy in force'),
    facts([['version', p.version], ['loaded', time(p.loaded_at_ms)]]),
    p.last_reload_error ? el('div', {class: 'msg error'}, el('strong', {}, 'last reload refused: '), visible(p.last_reload_error)) : null,
    el('div', {class: 'table-wrap'}, el('table', {class: 'list rules'},
      el('thead', {}, el('tr', {}, ['rule', 'effect', 'details'].map((h) => el('th', {}, h)))),
      el('tbody', {}, rules.map((r) => {
        const rest = Object.assign({}, r);
        delete rest.name; delete rest.effect;
        return el('tr', {},
          el('td', {'data-label': 'rule'}, visible(r.name)),
          el('td', {'data-label': 'effect'}, badge(r.effect)),
          el('td', {'data-label': 'details'}, code(JSON.stringify(rest), 'code small')));
      }))))));
}
