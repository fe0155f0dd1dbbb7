// The cutover dashboard. One loop asks the bridge for everything it shows
// (GET /api/state: new events, every route's status, new history points);
// the bridge holds the call up to 2 s until an event arrives, and the loop
// never asks more than once a second. Actions are confirmed, then POSTed
// with the session's CSRF token; a refusal shows the admin API's message.
'use strict';
(() => {
  const csrf = document.querySelector('meta[name=csrf]').content;
  const WINDOW_MS = 15 * 60 * 1000;
  const MIN_GAP_MS = 1000;
  const RETRY_MS = 2000;
  const HOLD_SECS = 2;
  const MAX_EVENTS = 200;
  const COLORS = { stable: '#2f6fdf', canary: '#e8772e' };

  const $ = (root, sel) => root.querySelector(sel);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  let since = 0; // newest event seen
  let historySince = 0; // newest history point seen (Unix ms)
  let started = null; // the proxy's history start: another value means a restart
  let latest = 0; // time of the newest point, the charts' right edge
  let events = [];
  const series = new Map(); // route -> { stable: [points], canary: [points] }
  const cards = new Map(); // route -> element
  let rendered = false;

  function pct(p) {
    return Number.isInteger(p) ? String(p) : p.toFixed(2).replace(/0$/, '');
  }

  function duration(secs) {
    secs = Math.max(0, Math.round(secs));
    const h = Math.floor(secs / 3600);
    const m = Math.floor((secs % 3600) / 60);
    const s = String(secs % 60).padStart(2, '0');
    return h ? `${h}h ${String(m).padStart(2, '0')}m` : `${m}m ${s}s`;
  }

  function setConnection(ok, message) {
    const c = document.getElementById('conn');
    c.dataset.connection = ok ? 'live' : 'down';
    c.textContent = ok ? 'live' : `reconnecting: ${message}`;
  }

  async function poll() {
    for (;;) {
      const began = Date.now();
      try {
        const wait = rendered ? HOLD_SECS : 0;
        const r = await fetch(`/api/state?since=${since}&history=${historySince}&wait=${wait}`);
        if (r.status === 401) throw new Error('this session ended (the dashboard restarted?): open the URL it printed');
        const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
        if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
        apply(body);
        setConnection(true);
      } catch (e) {
        setConnection(false, e.message);
        await sleep(RETRY_MS);
      }
      const gap = MIN_GAP_MS - (Date.now() - began);
      if (gap > 0) await sleep(gap);
    }
  }

  function apply(body) {
    const h = body.history;
    if (h && started !== null && h.started_ms !== started) {
      // The proxy restarted: its event numbers and history start over.
      since = 0;
      historySince = 0;
      events = [];
      series.clear();
      started = h.started_ms;
      renderStatus(body.status);
      return;
    }
    if (h) started = h.started_ms;
    for (const e of body.events) since = Math.max(since, e.seq);
    events = body.events.slice().reverse().concat(events).slice(0, MAX_EVENTS);
    if (h) addHistory(h);
    renderStatus(body.status);
    renderEvents();
    renderFleet(body.fleet);
    if (!rendered) {
      rendered = true;
      // Page load to the first full render, for tests and the README.
      document.documentElement.dataset.rendered = String(Math.round(performance.now()));
    }
  }

  function addHistory(h) {
    for (const route of h.routes) {
      const s = series.get(route.name) || { stable: [], canary: [] };
      for (const v of ['stable', 'canary']) {
        for (const p of route.versions[v] || []) {
          s[v].push(p);
          historySince = Math.max(historySince, p[0]);
          latest = Math.max(latest, p[0]);
        }
      }
      series.set(route.name, s);
    }
    for (const s of series.values()) {
      for (const v of ['stable', 'canary']) s[v] = s[v].filter((p) => p[0] > latest - WINDOW_MS);
    }
  }

  function renderStatus(status) {
    const config = document.getElementById('config');
    const reload = status.reload || {};
    config.textContent = `config ${status.config || '(embedded)'} · hash ${reload.config_hash || '-'}` +
      (reload.error ? ` · last reload rejected: ${reload.error}` : '');
    const names = new Set();
    for (const route of status.routes) {
      names.add(route.name);
      let card = cards.get(route.name);
      if (!card) {
        card = makeCard(route.name);
        cards.set(route.name, card);
        document.getElementById('routes').appendChild(card);
      }
      update(card, route);
      drawCharts(card, route.name);
    }
    for (const [name, card] of cards) {
      if (!names.has(name)) {
        card.remove();
        cards.delete(name);
      }
    }
  }

  function makeCard(name) {
    const card = document.getElementById('route-template').content.firstElementChild.cloneNode(true);
    card.dataset.route = name;
    const slider = $(card, '.slider');
    const input = $(card, '.weight-input');
    slider.addEventListener('input', () => {
      card.dataset.editing = 'true';
      input.value = slider.value;
    });
    slider.addEventListener('change', () => setWeight(card, name));
    input.addEventListener('input', () => {
      card.dataset.editing = 'true';
    });
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') setWeight(card, name);
    });
    $(card, '[data-action="set-weight"]').addEventListener('click', () => setWeight(card, name));
    const simple = {
      promote: `Promote ${name}: weight 100%, every user on the canary?`,
      rollback: `Roll back ${name}: weight 0% and halted, everyone on stable (beta testers too)?`,
      pause: `Pause the rollout of ${name}? The weight stays where it is.`,
      resume: `Resume the rollout of ${name}?`,
      abort: `Abort the rollout of ${name}? The weight stays where it is.`,
    };
    for (const [action, question] of Object.entries(simple)) {
      $(card, `[data-action="${action}"]`).addEventListener('click', () => act(card, name, action, null, question));
    }
    $(card, '.rollout-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      startRollout(card, name, ev.target);
    });
    return card;
  }

  function setWeight(card, name) {
    const weight = Number($(card, '.weight-input').value);
    if ($(card, '.weight-input').value === '' || !Number.isFinite(weight)) {
      showError(card, 'the weight must be a number from 0 to 100');
      return;
    }
    act(card, name, 'weight', { weight }, `Set the canary weight of ${name} to ${weight}%?`);
  }

  function startRollout(card, name, form) {
    const f = (k) => form.elements[k].value.trim();
    const body = {
      steps: f('steps').split(/[\s,]+/).filter(Boolean).map(Number),
      interval: f('interval'),
    };
    if (f('max_error_rate')) body.max_error_rate = Number(f('max_error_rate')) / 100;
    if (f('max_p99')) body.max_p99 = f('max_p99');
    if (f('min_requests')) body.min_requests = Number(f('min_requests'));
    const question = `Start a rollout of ${name}: ${body.steps.join('% → ')}%, each step held ${body.interval}?`;
    act(card, name, 'rollout', body, question);
  }

  function showError(card, message) {
    const e = $(card, '[data-error]');
    e.textContent = message;
    e.hidden = !message;
  }

  async function act(card, name, action, body, question) {
    if (!window.confirm(question)) {
      delete card.dataset.editing;
      return;
    }
    showError(card, '');
    try {
      const r = await fetch(`/api/routes/${encodeURIComponent(name)}/${action}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Cutover-CSRF': csrf },
        body: JSON.stringify(body || {}),
      });
      const v = await r.json().catch(() => ({}));
      if (!r.ok) {
        showError(card, `${v.error || 'refused'} (${r.status})`);
        return;
      }
      delete card.dataset.editing;
      update(card, v);
    } catch (e) {
      showError(card, `cannot reach the dashboard: ${e.message}`);
    }
  }

  function update(card, r) {
    const canary = r.canary != null;
    $(card, '.name').textContent = r.name;
    $(card, '.where').textContent = `${r.host}${r.path_prefix} · ${r.stable} → ${canary ? r.canary : 'no canary'}`;
    const w = $(card, '[data-weight]');
    w.dataset.weight = String(r.weight);
    w.textContent = pct(r.weight);
    const halted = $(card, '[data-halted]');
    halted.dataset.halted = String(r.halted);
    halted.textContent = r.halted ? 'yes' : 'no';
    const ro = r.rollout;
    const badge = $(card, '.badge');
    badge.className = 'badge' + (r.halted ? ' halted' : ro ? ' rollout' : '');
    badge.textContent = r.halted ? 'halted: everyone on stable'
      : ro ? `rollout step ${ro.step}/${ro.steps.length}${ro.paused ? ' (paused)' : ''}` : 'live';
    const share = r.halted ? 0 : r.weight;
    const [bs, bc] = card.querySelectorAll('.bar');
    bs.style.width = `${100 - share}%`;
    bc.style.width = `${share}%`;
    bs.textContent = share < 100 ? `stable ${r.stable} ${pct(100 - share)}%` : '';
    bc.textContent = share > 0 ? `canary ${r.canary} ${pct(share)}%` : '';
    if (!card.dataset.editing) {
      $(card, '.slider').value = String(r.weight);
      $(card, '.weight-input').value = String(r.weight);
    }
    $(card, '[data-action="pause"]').hidden = !ro || ro.paused;
    $(card, '[data-action="resume"]').hidden = !ro || !ro.paused;
    $(card, '[data-action="abort"]').hidden = !ro;
    $(card, '.rollout-form').hidden = !!ro || !canary;
    renderRollout(card, r);
    renderHealth(card, r);
  }

  function figures(f) {
    const p99 = f.p99_ms == null ? '-' : `${f.p99_ms.toFixed(1)} ms`;
    return `${f.requests} requests, ${(f.error_rate * 100).toFixed(2)}% errors, p99 ${p99}`;
  }

  function renderRollout(card, r) {
    const box = $(card, '.plan');
    box.textContent = '';
    const ro = r.rollout;
    if (!ro) {
      if (r.last_outcome) box.append(text('p', `Last rollout: ${r.last_outcome}`, 'muted'));
      delete card.dataset.deadline;
      return;
    }
    const list = document.createElement('ol');
    list.className = 'steps';
    ro.steps.forEach((weight, i) => {
      const li = document.createElement('li');
      const n = i + 1;
      if (n < ro.step) {
        li.className = 'passed';
        li.textContent = `${pct(weight)}% ✓ passed`;
      } else if (n === ro.step) {
        li.className = 'current';
        li.dataset.step = 'current';
        li.textContent = `${pct(weight)}% `;
        const left = document.createElement('span');
        left.className = 'time-left';
        li.append(left);
      } else {
        li.className = 'pending';
        li.textContent = `${pct(weight)}% pending`;
      }
      list.append(li);
    });
    box.append(list);
    card.dataset.deadline = String(Date.now() + ro.time_left_secs * 1000);
    card.dataset.paused = String(ro.paused);
    tick(card);
    const limits = `limits: 5xx ≤ ${(ro.max_error_rate * 100).toFixed(2)}%` +
      (ro.max_p99_ms != null ? `, p99 ≤ ${ro.max_p99_ms} ms` : '') +
      `, judged with ≥ ${ro.min_requests} canary requests` +
      (ro.extensions ? `; step extended ${ro.extensions}× for lack of traffic` : '');
    box.append(text('p', `This step: canary ${figures(ro.canary)}; stable ${figures(ro.stable)}`));
    box.append(text('p', limits, 'muted'));
  }

  function tick(card) {
    const left = $(card, '.time-left');
    if (!left || !card.dataset.deadline) return;
    const secs = (Number(card.dataset.deadline) - Date.now()) / 1000;
    left.textContent = card.dataset.paused === 'true' ? `paused, ${duration(secs)} left` : `judged in ${duration(secs)}`;
  }

  function text(tag, content, cls) {
    const e = document.createElement(tag);
    e.textContent = content;
    if (cls) e.className = cls;
    return e;
  }

  function renderHealth(card, r) {
    const box = $(card, '.health');
    box.textContent = '';
    for (const pool of r.pools) {
      const up = pool.backends.filter((b) => b.healthy).length;
      const div = document.createElement('div');
      div.dataset.pool = pool.name;
      div.append(text('b', `${pool.version} `), text('span', `${pool.name}: ${up}/${pool.backends.length} up`));
      const ul = document.createElement('ul');
      for (const b of pool.backends) {
        const li = text('li', `${b.address} ${b.healthy ? 'up' : 'DOWN'} (${b.reason})`, b.healthy ? 'up' : 'down');
        ul.append(li);
      }
      div.append(ul);
      box.append(div);
    }
  }

  function renderEvents() {
    const list = document.getElementById('events');
    list.textContent = '';
    for (const e of events) {
      const li = document.createElement('li');
      const time = text('time', (e.time || '').slice(11, 19));
      li.append(time, text('span', `${e.kind} `, 'kind'));
      let rest = e.route ? `${e.route} ` : '';
      if (e.before || e.after) rest += `${e.before || ''} → ${e.after || ''} `;
      if (e.detail) rest += `(${e.detail}) `;
      rest += `by ${e.actor}`;
      li.append(text('span', rest));
      list.append(li);
    }
  }

  // Fleet mode: each replica (and any other list the API gives, such as the
  // rollouts' drivers) as a line of its fields; a replica whose config hash
  // differs from the others' is flagged.
  function renderFleet(fleet) {
    const box = document.getElementById('fleet');
    box.hidden = !fleet;
    if (!fleet) return;
    const list = $(box, 'ul');
    list.textContent = '';
    const show = (v) => (v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v));
    const hashes = new Map();
    for (const r of Array.isArray(fleet.replicas) ? fleet.replicas : []) {
      hashes.set(r.config_hash, (hashes.get(r.config_hash) || 0) + 1);
    }
    const common = [...hashes].sort((a, b) => b[1] - a[1])[0]?.[0];
    for (const [key, value] of Object.entries(fleet)) {
      for (const item of Array.isArray(value) ? value : [value]) {
        const line = item !== null && typeof item === 'object'
          ? Object.entries(item).map(([k, v]) => `${k} ${show(v)}`).join(' · ') : show(item);
        const li = text('li', `${key}: ${line}`);
        if (key === 'replicas' && item && item.config_hash !== common) li.className = 'flag';
        list.append(li);
      }
    }
  }

  // Values per point [time_ms, seconds, requests, errors, p99_ms].
  const CHARTS = {
    rps: { value: (p) => p[2] / (p[1] || 2), format: (v) => String(+v.toFixed(v >= 100 ? 0 : 1)) },
    errors: { value: (p) => (p[2] ? (100 * p[3]) / p[2] : null), format: (v) => `${+v.toFixed(2)}%` },
    p99: { value: (p) => p[4], format: (v) => (v >= 1000 ? `${(v / 1000).toFixed(1)}s` : `${v.toFixed(v > 0 && v < 10 ? 1 : 0)}ms`) },
  };

  function drawCharts(card, name) {
    const s = series.get(name) || { stable: [], canary: [] };
    for (const canvas of card.querySelectorAll('canvas[data-chart]')) {
      const chart = CHARTS[canvas.dataset.chart];
      const lines = ['stable', 'canary'].map((v) => ({
        color: COLORS[v],
        points: s[v].map((p) => [p[0], chart.value(p)]),
      }));
      draw(canvas, lines, chart.format);
    }
  }

  // A round top for the y axis, and how many grid steps divide it evenly.
  function niceMax(max) {
    if (!(max > 0)) return [1, 5];
    const step = 10 ** Math.floor(Math.log10(max));
    for (const [m, ticks] of [[1, 5], [2, 4], [2.5, 5], [5, 5], [10, 5]]) {
      if (max <= m * step) return [m * step, ticks];
    }
    return [10 * step, 5];
  }

  function draw(canvas, lines, format) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 300;
    const h = canvas.clientHeight || 120;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const g = canvas.getContext('2d');
    g.scale(dpr, dpr);
    const pad = { l: 46, r: 8, t: 8, b: 18 };
    const right = latest || Date.now();
    const left = right - WINDOW_MS;
    let max = 0;
    let count = 0;
    for (const l of lines) {
      for (const [t, v] of l.points) if (v != null && t > left) max = Math.max(max, v);
    }
    let ticks;
    [max, ticks] = niceMax(max);
    const x = (t) => pad.l + ((t - left) / WINDOW_MS) * (w - pad.l - pad.r);
    const y = (v) => pad.t + (1 - v / max) * (h - pad.t - pad.b);
    g.font = '10px system-ui, sans-serif';
    g.lineWidth = 1;
    g.strokeStyle = '#e3e6ea';
    g.fillStyle = '#6b7280';
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= ticks; i++) {
      const v = (max * i) / ticks;
      g.beginPath();
      g.moveTo(pad.l, Math.round(y(v)) + 0.5);
      g.lineTo(w - pad.r, Math.round(y(v)) + 0.5);
      g.stroke();
      g.fillText(format(v), pad.l - 4, y(v));
    }
    g.textBaseline = 'bottom';
    g.textAlign = 'center';
    for (const m of [15, 10, 5, 0]) {
      g.fillText(m ? `-${m}m` : 'now', Math.min(x(right - m * 60000), w - pad.r - 10), h);
    }
    g.lineWidth = 1.5;
    for (const l of lines) {
      g.strokeStyle = l.color;
      g.beginPath();
      let pen = false;
      for (const [t, v] of l.points) {
        if (t <= left || v == null) {
          pen = false;
          continue;
        }
        if (pen) g.lineTo(x(t), y(v));
        else g.moveTo(x(t), y(v));
        pen = true;
        count++;
      }
      g.stroke();
    }
    canvas.dataset.points = String(count);
  }

  setInterval(() => cards.forEach(tick), 1000);
  window.addEventListener('resize', () => cards.forEach((card, name) => drawCharts(card, name)));
  poll();
})();
