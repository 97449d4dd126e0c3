// DOM helpers. Every string from the API reaches the page through textContent (or an
// attribute set by setAttribute on a fixed name), never parsed as markup, so a statement holding
// `<script>` is text, not markup.

// Builds an element: el('a', {href: '#/x', class: 'y'}, 'text', child, ...).
// Attribute names are always literals of this code; values may be data (setAttribute escapes).
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  append(e, children);
  return e;
}

export function append(parent, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    parent.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return parent;
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

// Record text as a person may safely read it: control characters become visible symbols
// (ESC as U+241B, the other C0 controls as their U+2400 pictures, DEL as U+2421), C1 controls
// and bidirectional overrides as <U+XXXX>, so a statement cannot clear a terminal, hide text
// or reorder what the approver reads. Newlines and tabs stay (statements span lines).
export function visible(text) {
  if (text === undefined || text === null) return '';
  let out = '';
  for (const ch of String(text)) {
    const c = ch.codePointAt(0);
    if (c === 0x0a || c === 0x09) out += ch;
    else if (c === 0x1b) out += '\u241b';
    else if (c < 0x20) out += String.fromCodePoint(0x2400 + c);
    else if (c === 0x7f) out += '\u2421';
    else if ((c >= 0x80 && c <= 0x9f) || (c >= 0x202a && c <= 0x202e) ||
             (c >= 0x2066 && c <= 0x2069) || c === 0x200e || c === 0x200f) {
      out += '<U+' + c.toString(16).toUpperCase().padStart(4, '0') + '>';
    } else out += ch;
  }
  return out;
}

// A block of record text (a statement, a command, a body). The symbols that stand for
// control characters are marked (class "ctl") so an approver sees them at a glance; the
// block's text is exactly visible(text).
export function code(text, cls) {
  const pre = el('pre', {class: cls || 'code'});
  let plain = '';
  for (const ch of visible(text)) {
    const c = ch.codePointAt(0);
    if (c >= 0x2400 && c <= 0x2421) {
      if (plain) pre.append(plain);
      plain = '';
      pre.append(el('span', {class: 'ctl'}, ch));
    } else plain += ch;
  }
  if (plain) pre.append(plain);
  return pre;
}

export function time(ms) {
  if (ms === undefined || ms === null) return '—';
  const d = new Date(Number(ms));
  if (isNaN(d.getTime())) return '—';
  return d.toLocaleString(undefined, {dateStyle: 'short', timeStyle: 'medium'});
}

// "4m 05s" for a span of milliseconds.
export function span(ms) {
  if (ms < 0) ms = 0;
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h >= 48) return `${Math.floor(h / 24)}d ${h % 24}h`;
  if (h) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m) return `${m}m ${String(r).padStart(2, '0')}s`;
  return `${r}s`;
}

// A definition list of [label, value] pairs; values that are missing are left out.
export function facts(pairs) {
  const dl = el('dl', {class: 'facts'});
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === '') continue;
    dl.append(el('dt', {}, k), el('dd', {}, v instanceof Node ? v : visible(v)));
  }
  return dl;
}

export function badge(state) {
  const s = String(state || 'unknown');
  return el('span', {class: 'badge badge-' + s.replace(/[^a-z_]/g, '')}, s);
}

export function message(text, cls) {
  return el('p', {class: 'msg ' + (cls || '')}, visible(text));
}
