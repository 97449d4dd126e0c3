// A terminal recording player for asciicast v2 (SSH and kubectl exec sessions).
//
// Output is rendered into a fixed-size grid of characters that understands what shells and
// simple programs write: printable text, CR, LF, backspace, tab, cursor movement and
// positioning, erase in line / display. Colours and every other escape sequence are read and
// dropped, never passed to the page: the grid is shown as the textContent of a <pre>.

import {el, clear} from './dom.js';

// Parses an asciicast v2 file: {width, height, events: [[seconds, code, data], ...]}.
export function parseCast(text) {
  const lines = String(text).split('\n').filter((l) => l.trim() !== '');
  if (!lines.length) throw new Error('empty recording');
  const header = JSON.parse(lines[0]);
  if (!header || header.version !== 2) throw new Error('not an asciicast v2 recording');
  const events = [];
  for (const line of lines.slice(1)) {
    let ev;
    try { ev = JSON.parse(line); } catch (_) { continue; }
    if (Array.isArray(ev) && ev.length >= 3 && typeof ev[0] === 'number' &&
        typeof ev[1] === 'string' && typeof ev[2] === 'string') events.push(ev);
  }
  const width = clamp(header.width | 0 || 80, 1, 500);
  const height = clamp(header.height | 0 || 24, 1, 200);
  return {width, height, events, duration: events.length ? events[events.length - 1][0] : 0};
}

function clamp(n, lo, hi) { return Math.max(lo, Math.min(hi, n)); }

export class Screen {
  constructor(width, height) {
    this.resize(width, height);
  }

  resize(width, height) {
    this.width = clamp(width, 1, 500);
    this.height = clamp(height, 1, 200);
    this.rows = Array.from({length: this.height}, () => this.blank());
    this.x = 0; this.y = 0;
    this.state = 'text'; this.params = '';
  }

  blank() { return new Array(this.width).fill(' '); }

  // Feeds output; escape sequences may be split across calls.
  write(data) {
    for (const ch of data) this.put(ch);
  }

  put(ch) {
    const c = ch.codePointAt(0);
    switch (this.state) {
      case 'esc':
        if (ch === '[') { this.state = 'csi'; this.params = ''; }
        else if (ch === ']' || ch === 'P' || ch === '_' || ch === '^') this.state = 'string';
        else if (ch === '(' || ch === ')' || ch === '#' || ch === '%') this.state = 'charset';
        else this.state = 'text'; // ESC 7, ESC 8, ESC =, ...: nothing a replay needs
        return;
      case 'charset':
        this.state = 'text';
        return;
      case 'csi':
        if (c >= 0x40 && c <= 0x7e) { this.csi(ch, this.params); this.state = 'text'; }
        else if (this.params.length < 64) this.params += ch;
        else this.state = 'text'; // an endless sequence is dropped, not buffered
        return;
      case 'string': // OSC / DCS: up to BEL or ESC \
        if (c === 0x07) this.state = 'text';
        else if (c === 0x1b) this.state = 'string-esc';
        return;
      case 'string-esc':
        this.state = ch === '\\' ? 'text' : 'string';
        return;
    }
    if (c === 0x1b) { this.state = 'esc'; return; }
    if (c === 0x0d) { this.x = 0; return; }
    if (c === 0x0a || c === 0x0b || c === 0x0c) { this.lineFeed(); return; }
    if (c === 0x08) { if (this.x > 0) this.x -= 1; return; }
    if (c === 0x09) { this.x = Math.min(this.width - 1, (Math.floor(this.x / 8) + 1) * 8); return; }
    if (c < 0x20 || c === 0x7f || (c >= 0x80 && c <= 0x9f)) return; // other controls: ignored
    if (this.x >= this.width) { this.x = 0; this.lineFeed(); }
    this.rows[this.y][this.x] = ch;
    this.x += 1;
  }

  lineFeed() {
    if (this.y === this.height - 1) {
      this.rows.shift();
      this.rows.push(this.blank());
    } else this.y += 1;
  }

  csi(final, params) {
    const priv = /^[?>=<]/.test(params);
    const nums = params.replace(/^[?>=<]/, '').split(';').map((p) => parseInt(p, 10));
    const n = (i, d) => (Number.isFinite(nums[i]) && nums[i] > 0 ? nums[i] : d);
    const x = this.x >= this.width ? this.width - 1 : this.x;
    if (priv) return; // modes (cursor visibility, alternate screen): nothing to draw
    switch (final) {
      case 'A': this.y = clamp(this.y - n(0, 1), 0, this.height - 1); break;
      case 'B': case 'e': this.y = clamp(this.y + n(0, 1), 0, this.height - 1); break;
      case 'C': case 'a': this.x = clamp(x + n(0, 1), 0, this.width - 1); break;
      case 'D': this.x = clamp(x - n(0, 1), 0, this.width - 1); break;
      case 'E': this.y = clamp(this.y + n(0, 1), 0, this.height - 1); this.x = 0; break;
      case 'F': this.y = clamp(this.y - n(0, 1), 0, this.height - 1); this.x = 0; break;
      case 'G': case '`': this.x = clamp(n(0, 1) - 1, 0, this.width - 1); break;
      case 'd': this.y = clamp(n(0, 1) - 1, 0, this.height - 1); break;
      case 'H': case 'f':
        this.y = clamp(n(0, 1) - 1, 0, this.height - 1);
        this.x = clamp(n(1, 1) - 1, 0, this.width - 1);
        break;
      case 'J': this.eraseDisplay(Number.isFinite(nums[0]) ? nums[0] : 0, x); break;
      case 'K': this.eraseLine(this.y, Number.isFinite(nums[0]) ? nums[0] : 0, x); break;
      case 'X': for (let i = x; i < Math.min(this.width, x + n(0, 1)); i++) this.rows[this.y][i] = ' '; break;
      case 'P': { // delete characters
        const row = this.rows[this.y];
        row.splice(x, n(0, 1));
        while (row.length < this.width) row.push(' ');
        break;
      }
      case '@': { // insert blanks
        const row = this.rows[this.y];
        row.splice(x, 0, ...new Array(n(0, 1)).fill(' '));
        row.length = this.width;
        break;
      }
      default: break; // colours (m) and the rest: ignored
    }
  }

  eraseLine(y, mode, x) {
    const row = this.rows[y];
    const [from, to] = mode === 0 ? [x, this.width] : mode === 1 ? [0, x + 1] : [0, this.width];
    for (let i = from; i < to; i++) row[i] = ' ';
  }

  eraseDisplay(mode, x) {
    if (mode === 2 || mode === 3) {
      this.rows = Array.from({length: this.height}, () => this.blank());
      return;
    }
    this.eraseLine(this.y, mode, x);
    const [from, to] = mode === 0 ? [this.y + 1, this.height] : [0, this.y];
    for (let y = from; y < to; y++) this.rows[y] = this.blank();
  }

  text() {
    return this.rows.map((r) => r.join('').replace(/\s+$/, '')).join('\n');
  }
}

// The player: a screen, play/pause, a seek bar and a speed choice.
export class Player {
  constructor(cast) {
    this.cast = cast;
    this.screen = new Screen(cast.width, cast.height);
    this.next = 0;        // index of the next event to apply
    this.at = 0;          // seconds into the recording
    this.speed = 1;
    this.timer = null;
    this.pre = el('pre', {class: 'term', 'data-cols': cast.width, 'data-rows': cast.height});
    this.button = el('button', {type: 'button', class: 'play', onclick: () => this.toggle()}, 'Play');
    this.seek = el('input', {type: 'range', class: 'seek', min: 0, max: Math.max(1, Math.ceil(cast.duration * 10)),
      step: 1, value: 0, 'aria-label': 'position', oninput: () => this.seekTo(this.seek.value / 10)});
    this.clock = el('span', {class: 'clock'}, '');
    const speed = el('select', {class: 'speed', 'aria-label': 'speed', onchange: () => { this.speed = Number(speed.value); if (this.timer) this.play(); }},
      ...[0.5, 1, 2, 4, 8].map((s) => el('option', {value: s, selected: s === 1}, s + '×')));
    this.node = el('div', {class: 'player'}, this.pre,
      el('div', {class: 'controls'}, this.button, this.seek, this.clock, speed));
    this.render();
  }

  apply(until) {
    const ev = this.cast.events;
    while (this.next < ev.length && ev[this.next][0] <= until) {
      const [, code, data] = ev[this.next];
      if (code === 'o') this.screen.write(data);
      else if (code === 'r') {
        const m = /^(\d+)x(\d+)$/.exec(data);
        if (m) this.screen.resize(Number(m[1]), Number(m[2]));
      }
      this.next += 1;
    }
    this.at = until;
  }

  render() {
    this.pre.textContent = this.screen.text();
    this.seek.value = String(Math.round(this.at * 10));
    this.clock.textContent = `${this.at.toFixed(1)} / ${this.cast.duration.toFixed(1)} s`;
  }

  // Seeking back replays from the start: output is a stream, not a set of frames.
  seekTo(t) {
    t = clamp(Number(t) || 0, 0, this.cast.duration);
    if (t < this.at) {
      this.screen = new Screen(this.cast.width, this.cast.height);
      this.next = 0;
    }
    this.apply(t);
    this.render();
  }

  play() {
    this.pause();
    if (this.at >= this.cast.duration) this.seekTo(0);
    this.button.textContent = 'Pause';
    let last = performance.now();
    this.timer = setInterval(() => {
      const now = performance.now();
      const t = Math.min(this.cast.duration, this.at + ((now - last) / 1000) * this.speed);
      last = now;
      this.apply(t);
      this.render();
      if (t >= this.cast.duration) this.pause();
    }, 50);
  }

  pause() {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.button.textContent = 'Play';
  }

  toggle() { if (this.timer) this.pause(); else this.play(); }

  destroy() { this.pause(); clear(this.node); }
}
