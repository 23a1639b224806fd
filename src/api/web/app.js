// The web console's code (served at /app.js, a module; the page is api/web/index.html,
// whose header says what it reads from the API).

const API = '/api/v1/';
const INFO_EVERY_MS = 1000;
const SLOW_EVERY_MS = 5000;
const KVP_EVERY_MS = 30000;
const RECONNECT_EVERY_MS = 3000;
const GRAPH_WINDOW_MS = 5 * 60 * 1000;
const KVP_MAX_ROWS = 500;
const AUTH_MESSAGE = 'Open the address Enlighten printed at start (it carries the access token).';

const $ = (id) => document.getElementById(id);

// ---------- small helpers ----------

/** Makes an element; children are nodes or strings (set as text, never parsed as HTML). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : text(c));
  return e;
}

/** A value as display text: null/undefined give '' (CSS shows a dash). */
function text(v) {
  return v === null || v === undefined ? '' : String(v);
}

function setText(id, v) {
  $(id).textContent = text(v);
}

/** Sets the text and a `state-...` class (for colour) on an element. */
function setState(id, v) {
  const e = $(id);
  e.textContent = text(v);
  e.className = v ? stateClass(v) : '';
}

/** A CSS class for a state word, e.g. `No Contact` -> `state-No-Contact`. */
function stateClass(v) {
  return 'state-' + String(v).replace(/[^A-Za-z0-9-]/g, '-');
}

function fmtBytes(n) {
  if (n === null || n === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + ' ' + units[i];
}

function fmtMiB(n) {
  return n === null || n === undefined ? '' : (Number(n) / 1048576).toFixed(0) + ' MiB';
}

/** 93784000 -> "1 d 2 h 3 min 4 s" (leading zero units left out). */
function fmtDuration(ms) {
  if (ms === null || ms === undefined) return '';
  const t = Math.floor(ms / 1000);
  const parts = [[Math.floor(t / 86400), 'd'], [Math.floor(t / 3600) % 24, 'h'],
                 [Math.floor(t / 60) % 60, 'min'], [t % 60, 's']];
  while (parts.length > 1 && parts[0][0] === 0) parts.shift();
  return parts.map(([n, unit]) => n + ' ' + unit).join(' ');
}

function fmtRate(perSecond, bytes) {
  if (perSecond === null) return '';
  return (bytes ? fmtBytes(perSecond) : perSecond.toFixed(perSecond < 10 ? 1 : 0)) + '/s';
}

// ---------- the API ----------

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

let authProblem = false; // the last answer was a 401: the banner says how to get the token

/** Calls the API; resolves to the parsed JSON (null for 204), throws ApiError otherwise. */
async function api(method, path, body, timeoutMs = 10000) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  const init = { method, signal: abort.signal, credentials: 'same-origin', cache: 'no-store' };
  if (method !== 'GET') {
    init.headers = { 'Content-Type': 'application/json' };
    init.body = JSON.stringify(body || {});
  }
  let res, raw;
  try {
    res = await fetch(API + path, init);
    raw = await res.text();
  } catch (e) {
    throw new ApiError(abort.signal.aborted ? `no answer within ${timeoutMs / 1000} s`
                                            : 'cannot reach the VMM', 0);
  } finally {
    clearTimeout(timer);
  }
  if (res.status === 401) {
    authProblem = true;
    showBanner(AUTH_MESSAGE);
    throw new ApiError(AUTH_MESSAGE, 401);
  }
  let data = null;
  try { data = raw ? JSON.parse(raw) : null; } catch (e) { data = null; }
  if (!res.ok) {
    const msg = data && typeof data.error === 'string' ? data.error
                                                       : `HTTP ${res.status} ${res.statusText}`.trim();
    throw new ApiError(msg, res.status);
  }
  return data;
}


function showBanner(message) {
  $('banner').textContent = message;
}

// ---------- vm.info: the VM, memory, disks, NICs ----------

let lastInfo = null;
let vmmReachable = false;

function renderFacts(dl, pairs) {
  const nodes = [];
  for (const [k, v] of pairs) nodes.push(el('dt', {}, k), el('dd', {}, text(v)));
  dl.replaceChildren(...nodes);
}

function renderVm(info) {
  setState('vm-state', info.state);
  setText('vm-title', info.vm_id);
  renderFacts($('vm-facts'), [
    ['state', info.state],
    ['vm_id', info.vm_id],
    ['vCPUs', info.cpus],
    ['uptime', fmtDuration(info.uptime_ms)],
    ['kernel', info.kernel],
    ['VMBus version', info.vmbus_version === null ? 'not connected' : info.vmbus_version],
    ['VMM RSS', fmtBytes(info.vmm_rss_bytes)],
    ['guest RSS', fmtBytes(info.guest_rss_bytes)],
  ]);
}

// Memory samples for the graph: {t (ms, local clock), current, committed}.
const memorySamples = [];

function renderMemory(info) {
  const m = info.memory;
  const canvas = $('memory-graph');
  if (!m) {
    $('memory-facts').replaceChildren();
    setText('memory-note', info.hyperv === false
      ? 'No dynamic memory: this VM runs without the Hyper-V interface (--hyperv off).'
      : 'No dynamic memory information (memory is null in vm.info: no Hyper-V interface).');
    $('memory-graph-box').hidden = true;
    memorySamples.length = 0;
    return;
  }
  $('memory-graph-box').hidden = false;
  renderFacts($('memory-facts'), [
    ['state', m.state],
    ['startup', fmtMiB(m.startup)],
    ['current', fmtMiB(m.current)],
    ['target', m.target === null ? 'none' : fmtMiB(m.target)],
    ['ballooned', fmtMiB(m.ballooned)],
    ['hot-added', fmtMiB(m.hot_added)],
    ['guest committed', m.last_report ? fmtMiB(m.last_report.committed) : 'no report yet'],
    ['last action', m.last_action],
  ]);
  setText('memory-note', m.problem ? 'problem: ' + m.problem : '');
  const now = Date.now();
  memorySamples.push({ t: now, current: m.current,
                       committed: m.last_report ? m.last_report.committed : null });
  while (memorySamples.length && memorySamples[0].t < now - GRAPH_WINDOW_MS) memorySamples.shift();
  drawMemoryGraph(canvas, now);
}

function drawMemoryGraph(canvas, now) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  let top = 0;
  for (const s of memorySamples) top = Math.max(top, s.current || 0, s.committed || 0);
  top = Math.max(top * 1.1, 64 * 1048576);
  const left = 64, bottom = h - 8;
  const x = (t) => left + (w - left - 4) * (1 - (now - t) / GRAPH_WINDOW_MS);
  const y = (v) => bottom - (bottom - 8) * (v / top);
  g.font = '11px system-ui, sans-serif';
  g.textBaseline = 'middle';
  g.fillStyle = '#8b919b';
  g.strokeStyle = '#2f333b';
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4, yy = Math.round(y(v)) + 0.5;
    g.beginPath(); g.moveTo(left, yy); g.lineTo(w - 4, yy); g.stroke();
    g.fillText(fmtMiB(v), 2, yy);
  }
  plotLine(g, 'current', '#5aa9e6', x, y);
  plotLine(g, 'committed', '#e6b35a', x, y);
}

function plotLine(g, field, colour, x, y) {
  g.strokeStyle = colour;
  g.lineWidth = 2;
  g.beginPath();
  let pen = false;
  for (const s of memorySamples) {
    if (s[field] === null || s[field] === undefined) { pen = false; continue; }
    if (pen) g.lineTo(x(s.t), y(s[field])); else g.moveTo(x(s.t), y(s[field]));
    pen = true;
  }
  g.stroke();
}

// Counter rates: the previous poll's counters by row key, with its uptime.
let previousCounters = new Map();
let previousUptime = null;

/** Per-second rate of a counter since the previous poll (null if unknown). */
function rateOf(key, field, value, uptime) {
  const prev = previousCounters.get(key);
  if (!prev || previousUptime === null) return null;
  const dt = (uptime - previousUptime) / 1000;
  const before = prev[field];
  if (!(dt > 0) || typeof before !== 'number' || value < before) return null;
  return (value - before) / dt;
}

function counterCell(key, field, value, uptime, bytes) {
  const td = el('td', { class: 'num' }, bytes ? fmtBytes(value) : text(value));
  const rate = rateOf(key, field, value, uptime);
  if (rate !== null) td.append(el('span', { class: 'rate' }, fmtRate(rate, bytes)));
  return td;
}

function renderDisks(info, counters) {
  const rows = (info.disks || []).map((d) => {
    const key = 'disk:' + d.id;
    counters.set(key, d);
    const c = (field, bytes) => counterCell(key, field, d[field], info.uptime_ms, bytes);
    return el('tr', {},
      el('td', {}, text(d.id)), el('td', {}, text(d.bus)), el('td', { class: 'num' }, text(d.lun)),
      el('td', {}, text(d.path)), el('td', {}, text(d.format) + (d.read_only ? ' (ro)' : '')),
      el('td', { class: 'num' }, fmtBytes(d.size_bytes)),
      c('reads'), c('writes'), c('bytes_read', true), c('bytes_written', true),
      el('td', { class: 'num' }, text(d.errors)),
      el('td', { class: 'num' }, d.latency_us_avg === undefined ? '' : text(d.latency_us_avg) + ' µs'));
  });
  $('disks').replaceChildren(...rows);
}

function sumQueues(nic) {
  const sum = { rx_packets: 0, rx_bytes: 0, tx_packets: 0, tx_bytes: 0, dropped: 0 };
  for (const q of nic.per_queue || []) {
    sum.rx_packets += q.rx_packets || 0;
    sum.rx_bytes += q.rx_bytes || 0;
    sum.tx_packets += q.tx_packets || 0;
    sum.tx_bytes += q.tx_bytes || 0;
    sum.dropped += (q.rx_dropped || 0) + (q.tx_dropped || 0);
  }
  return sum;
}

function renderNics(info, counters) {
  const rows = (info.nics || []).map((n) => {
    const key = 'nic:' + n.id;
    const sum = sumQueues(n);
    counters.set(key, sum);
    const c = (field, bytes) => counterCell(key, field, sum[field], info.uptime_ms, bytes);
    const link = (n.link_up ? 'up' : 'down') + (n.guest_ready ? ', guest ready' : ', guest not ready');
    return el('tr', {},
      el('td', {}, text(n.id)), el('td', {}, text(n.mac)),
      el('td', { title: text(n.backend_info) }, text(n.backend)), el('td', {}, link),
      el('td', { class: 'num' }, text(n.mtu)),
      el('td', { class: 'num' }, `${text(n.queues)} / ${text(n.max_queues)}`),
      c('rx_packets'), c('rx_bytes', true), c('tx_packets'), c('tx_bytes', true), c('dropped'));
  });
  $('nics').replaceChildren(...rows);
}

function renderInfo(info) {
  renderVm(info);
  renderMemory(info);
  const counters = new Map();
  renderDisks(info, counters);
  renderNics(info, counters);
  previousCounters = counters;
  previousUptime = info.uptime_ms;
  document.body.dataset.lastUpdate = String(info.uptime_ms);
}

async function pollInfo() {
  try {
    const info = await api('GET', 'vm.info', null, 5000);
    lastInfo = info;
    vmmReachable = true;
    authProblem = false;
    showBanner('');
    document.body.classList.remove('stale');
    renderInfo(info);
    consoleCheck();
  } catch (e) {
    vmmReachable = false;
    document.body.classList.add('stale');
    if (!authProblem) showBanner('Disconnected from the VMM (' + e.message + '); retrying…');
  }
}

// ---------- heartbeat, integration services, KVP ----------

function renderHeartbeat(hb) {
  setState('heartbeat-state', hb.state);
  setText('heartbeat-sequence', hb.sequence);
  const age = hb.last_reply_ms;
  setText('heartbeat-age', age === null ? 'never'
    : (age < 60000 ? (age / 1000).toFixed(1) + ' s' : fmtDuration(age)) + ' ago');
}

function renderServices(list) {
  const rows = (list.services || []).map((s) => {
    const status = el('td', { class: 'status' }, text(s.status));
    if (s.status) status.classList.add(stateClass(s.status));
    return el('tr', { dataset: { service: text(s.name) } },
      el('td', {}, text(s.name)), el('td', {}, s.enabled ? 'yes' : 'no'),
      el('td', {}, text(s.version)), status);
  });
  $('services').replaceChildren(...rows);
}

function renderKvp(pool, data) {
  const entries = (data && data.entries) || [];
  const rows = entries.slice(0, KVP_MAX_ROWS).map((e) =>
    el('tr', {}, el('th', {}, text(e.key)), el('td', {}, text(e.value))));
  $('kvp-' + pool).replaceChildren(...rows);
  const more = entries.length - KVP_MAX_ROWS;
  setText('kvp-' + pool + '-note', entries.length === 0 ? 'empty'
    : more > 0 ? `${more} more entries not shown` : '');
}

/** Runs one GET and renders it, or shows its error in the given note. */
async function refresh(path, render, noteId, timeoutMs) {
  try {
    const data = await api('GET', path, null, timeoutMs);
    if (noteId) setText(noteId, '');
    render(data);
  } catch (e) {
    if (noteId) setText(noteId, 'unavailable: ' + e.message);
  }
}

async function pollStatus() {
  await Promise.all([
    refresh('vm.heartbeat', renderHeartbeat, 'heartbeat-note', 5000),
    refresh('vm.integration-services', renderServices, 'services-note', 5000),
  ]);
}

async function pollKvp() {
  // KVP reads wait for the guest (at most 4 such calls at once VMM-wide): one at a time,
  // and none for a page nobody looks at.
  if (document.hidden) return;
  for (const pool of ['auto', 'guest']) {
    await refresh('vm.kvp/' + pool, (d) => renderKvp(pool, d), `kvp-${pool}-note`, 35000);
  }
}

/** Calls fn, then again every `every` ms after the previous call ended. */
async function loop(fn, every) {
  for (;;) {
    const started = performance.now();
    await fn().catch((e) => console.error(e));
    const wait = Math.max(0, every - (performance.now() - started));
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

// ---------- the buttons ----------

const GRACEFUL = ' gracefully: the shutdown service, then the ACPI power button (30 s each), then by force.';
const LOSSY = ' at once, without the guest: whatever it has not written to disk is lost.';
const ACTIONS = {
  shutdown: { path: 'vm.shutdown', label: 'Shut down', text: 'Shut the guest down' + GRACEFUL },
  reboot: { path: 'vm.reboot', label: 'Reboot', text: 'Reboot the guest' + GRACEFUL },
  poweroff: { path: 'vm.power-off', label: 'Power off', danger: true,
              text: 'Power the VM off' + LOSSY + ' The VMM exits.' },
  reset: { path: 'vm.reset', label: 'Reset', danger: true, text: 'Reset the VM' + LOSSY },
};

let confirmResolve = null; // resolves the pending confirmAction

/** Shows the in-page modal; resolves true if the user confirmed. */
function confirmAction(action) {
  answerConfirm(false); // at most one question at a time
  setText('confirm-title', action.label + ' the VM?');
  setText('confirm-text', action.text);
  setText('confirm-yes', action.label);
  $('confirm-yes').classList.toggle('danger', Boolean(action.danger));
  $('confirm-dialog').showModal();
  $('confirm-no').focus();
  return new Promise((resolve) => { confirmResolve = resolve; });
}

/** Closes the modal and answers the pending question (once). */
function answerConfirm(yes) {
  const dialog = $('confirm-dialog');
  if (dialog.open) dialog.close();
  const resolve = confirmResolve;
  confirmResolve = null;
  if (resolve) resolve(yes);
}

async function runAction(name) {
  const action = ACTIONS[name];
  if (!(await confirmAction(action))) return;
  const buttons = document.querySelectorAll('header .actions button');
  buttons.forEach((b) => { b.disabled = true; });
  try {
    await api('PUT', action.path, {}, 10000);
    setText('api-error', '');
  } catch (e) {
    setText('api-error', `${action.label} failed: ${e.message}`);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    pollInfo();
  }
}

function setupButtons() {
  for (const button of document.querySelectorAll('header .actions button')) {
    button.addEventListener('click', () => runAction(button.dataset.action));
  }
  $('confirm-yes').addEventListener('click', () => answerConfirm(true));
  $('confirm-no').addEventListener('click', () => answerConfirm(false));
  $('confirm-dialog').addEventListener('close', () => answerConfirm(false)); // Esc
  $('btn-reconnect').addEventListener('click', () => connectConsole());
  $('btn-cad').addEventListener('click', () => {
    if (rfb) { rfb.sendCtrlAltDel(); rfb.focus(); }
  });
}

// ---------- the console (noVNC) ----------

// noVNC's RFB class, imported dynamically so that the dashboard works without it.
let RFB = null;
let rfbMissing = false;
import('/novnc/core/rfb.js').then((m) => { RFB = m.default; if (lastInfo) consoleCheck(); },
                                  () => { rfbMissing = true; if (lastInfo) consoleCheck(); });

let rfb = null;                  // the RFB connection, while there is one
let consoleStatus = 'connecting';
let reconnectTimer = null;

function setConsoleStatus(status, overlay) {
  consoleStatus = status;
  setState('console-status', status);
  setText('console-overlay', overlay);
  $('btn-reconnect').hidden = status !== 'disconnected';
  $('btn-cad').disabled = status !== 'connected';
}

function vmRuns() {
  return vmmReachable && lastInfo !== null && lastInfo.state !== 'stopped';
}

function websockifyUrl() {
  return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/websockify';
}

/** Tries to reconnect in 3 s (then every 3 s) while the VM runs. */
function scheduleReconnect() {
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(() => {
    if (rfb || consoleStatus !== 'disconnected') return;
    if (vmRuns() && lastInfo.console) connectConsole(); else scheduleReconnect();
  }, RECONNECT_EVERY_MS);
}

function connectConsole() {
  if (rfb) return;
  clearTimeout(reconnectTimer);
  if (!RFB) {
    if (rfbMissing) setConsoleStatus('disconnected', 'noVNC (/novnc/core/rfb.js) did not load: is the novnc package installed?');
    return;
  }
  setConsoleStatus('connecting', 'Connecting to the console…');
  try {
    rfb = new RFB($('console'), websockifyUrl(), { shared: true });
  } catch (e) {
    rfb = null;
    setConsoleStatus('disconnected', 'Cannot open the console: ' + e.message);
    scheduleReconnect();
    return;
  }
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  rfb.background = '#000';
  rfb.addEventListener('connect', () => {
    setConsoleStatus('connected', '');
    rfb.focus();
  });
  rfb.addEventListener('disconnect', (ev) => {
    rfb = null;
    setText('console-name', '');
    setConsoleStatus('disconnected', ev.detail && ev.detail.clean === false
      ? 'The console connection was lost.' : 'The console is disconnected.');
    scheduleReconnect();
  });
  rfb.addEventListener('credentialsrequired', () => {
    setText('console-overlay', 'The VNC server asks for credentials, which this page does not support.');
    rfb.disconnect();
  });
  rfb.addEventListener('desktopname', (ev) => setText('console-name', ev.detail.name));
}

/** After each vm.info: shows "no display", sizes the box, or connects when it should. */
function consoleCheck() {
  const c = lastInfo.console;
  if (!c) {
    if (!rfb) {
      setState('console-status', 'this VM has no display');
      setText('console-overlay', 'this VM has no display');
      $('btn-reconnect').hidden = true;
      $('btn-cad').disabled = true;
    }
    return;
  }
  const mode = c.mode || c.offered;
  if (mode && mode.width > 0 && mode.height > 0) {
    document.querySelector('.console-wrap').style.aspectRatio = `${mode.width} / ${mode.height}`;
  }
  // The first connection; later ones come from scheduleReconnect or the button.
  if (!rfb && consoleStatus === 'connecting' && vmRuns() && (RFB || rfbMissing)) connectConsole();
}

// ---------- start ----------

setupButtons();
window.addEventListener('resize', () => drawMemoryGraph($('memory-graph'), Date.now()));
loop(pollInfo, INFO_EVERY_MS);
loop(pollStatus, SLOW_EVERY_MS);
loop(pollKvp, KVP_EVERY_MS);
