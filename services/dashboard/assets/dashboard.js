// shortlink ops dashboard: the little script the server-rendered pages
// need. Relative times, partial refresh, the live log stream, load-test
// stats and chaos actions. No dependencies, no build step.
'use strict';
(function () {
  const $ = (s, r) => (r || document).querySelector(s);
  const csrf = () => { const m = $('meta[name="csrf"]'); return m ? m.content : ''; };

  function rel(t) {
    const s = Math.round(Date.now() / 1000 - t);
    if (s < 0) return 'in the future';
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function tick() {
    document.querySelectorAll('.rel[data-t]').forEach((e) => { e.textContent = '(' + rel(+e.dataset.t) + ')'; });
    const c = $('#clock');
    if (c) c.textContent = new Date().toISOString().slice(11, 19) + ' UTC';
  }
  setInterval(tick, 1000);

  // Pages with data-refresh re-fetch their main element (not while the
  // operator is typing in it).
  function refresher() {
    const main = $('main[data-refresh]');
    if (!main) return;
    const every = +main.dataset.refresh * 1000;
    setInterval(async () => {
      const m = $('main[data-refresh]');
      if (document.hidden || (m && m.contains(document.activeElement) && document.activeElement.tagName !== 'BODY' && document.activeElement.tagName !== 'BUTTON')) return;
      if (window.slWatching) return;
      try {
        const r = await fetch(location.href, { headers: { 'x-partial': '1' } });
        if (!r.ok) return;
        // A chaos action's report survives the refresh.
        const kept = $('#chaos-result');
        const keep = kept && !kept.hidden ? kept.outerHTML : null;
        m.outerHTML = await r.text();
        if (keep && $('#chaos-result')) $('#chaos-result').outerHTML = keep;
        tick();
      } catch (_) { /* next time */ }
    }, every);
  }

  function logs() {
    const rows = $('#log-rows');
    if (!rows || !window.EventSource) return;
    const state = $('#live-state');
    const counter = $('#counter');
    let paused = false;
    let held = [];
    const show = (html) => {
      rows.insertAdjacentHTML('afterbegin', html);
      while (rows.rows.length > 500) rows.deleteRow(rows.rows.length - 1);
      if (counter) counter.textContent = rows.rows.length + ' events';
    };
    const es = new EventSource(rows.dataset.stream);
    es.onopen = () => { state.textContent = paused ? 'paused' : 'live'; state.className = paused ? 'warn' : 'good'; };
    es.onmessage = (m) => { if (paused) { held.push(m.data); state.textContent = 'paused (' + held.length + ' new)'; } else show(m.data); tick(); };
    es.addEventListener('lagged', (m) => { state.textContent = 'live (skipped ' + m.data + ' events: too fast)'; });
    es.onerror = () => { state.textContent = 'reconnecting…'; state.className = 'bad'; };
    const pause = $('#pause');
    pause.addEventListener('click', () => {
      paused = !paused;
      pause.textContent = paused ? 'Resume' : 'Pause';
      state.textContent = paused ? 'paused' : 'live';
      state.className = paused ? 'warn' : 'good';
      if (!paused) { held.forEach(show); held = []; tick(); }
    });
  }

  function load() {
    const live = $('#live');
    if (!live) return;
    const f = (v, unit, d) => (v == null ? '—' : (+v).toFixed(d) + (unit ? ' ' + unit : ''));
    let wasRunning = live.dataset.running === 'true';
    setInterval(async () => {
      let st;
      try { st = await (await fetch('/load/status')).json(); } catch (_) { return; }
      const s = st.stats;
      $('#stop').disabled = !st.running;
      if (st.running && s) {
        $('#run-state').textContent = 'running: ' + st.run.tier + ' against ' + st.run.target + ' for ' + st.run.duration + ' (' + f(s.elapsed_s, 's', 0) + ' elapsed)';
        $('#s-rps').textContent = f(s.rps, 'req/s', 0);
        $('#s-requests').textContent = f(s.requests, '', 0);
        $('#s-lat').textContent = f(s.p50_ms, '', 1) + ' / ' + f(s.p95_ms, '', 1) + ' / ' + f(s.max_ms, 'ms', 1);
        $('#s-err').textContent = f(s.error_rate * 100, '%', 2);
        $('#s-vus').textContent = f(s.vus, 'VUs', 0);
      }
      $('#k6-log').textContent = (st.log || []).join('\n');
      if (wasRunning && !st.running) location.reload();
      wasRunning = st.running;
    }, 1000);
  }

  // After an action, follow the component closely (every 200 ms, up to
  // 60 s) and report each state it passes through, so a kill shows as
  // running → stopped → running even when the watchdog restarts it within
  // a second. A new pid while running counts as a restart seen too late.
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function watch(name, action, first, out) {
    window.slWatching = true;
    const t0 = Date.now();
    const seen = [first.state];
    let pid = first.pid;
    let wentDown = !['running'].includes(first.state);
    const want = { kill: 'back', restart: 'back', stop: 'stopped', pause: 'paused', start: 'running', resume: 'running' }[action];
    try {
      while (Date.now() - t0 < 60000) {
        await sleep(200);
        let list;
        try { list = await (await fetch('/chaos/components', { headers: { accept: 'application/json' } })).json(); } catch (_) { continue; }
        const c = Array.isArray(list) ? list.find((x) => x.name === name) : null;
        if (!c) continue;
        if (c.state === 'running' && pid && c.pid && c.pid !== pid && seen[seen.length - 1] === 'running') {
          seen.push('exited', 'running');
          wentDown = true;
        } else if (seen[seen.length - 1] !== c.state) {
          seen.push(c.state);
          if (c.state !== 'running') wentDown = true;
        }
        pid = c.pid || pid;
        const row = document.querySelector('#components tr[data-name="' + name + '"]');
        if (row) {
          row.dataset.state = c.state;
          const st = row.querySelector('.state');
          if (st) { st.textContent = c.state; st.className = 'state state-' + c.state; }
        }
        const secs = ((Date.now() - t0) / 1000).toFixed(1);
        out.textContent = action + ' ' + name + ': ' + seen.join(' → ');
        const done = want === 'back' ? wentDown && c.state === 'running' : c.state === want;
        if (done) {
          out.className = 'notice good';
          out.textContent += want === 'back' ? ' (back after ' + secs + ' s)' : ' (after ' + secs + ' s)';
          return;
        }
      }
      out.className = 'notice bad';
      out.textContent += ' (not settled after 60 s: look at /incidents and the watchdog)';
    } finally {
      window.slWatching = false;
    }
  }

  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button.chaos');
    if (!b) return;
    const { name, action } = b.dataset;
    if (!window.confirm(action + ' ' + name + '? This really happens.')) return;
    const out = $('#chaos-result');
    out.hidden = false;
    out.className = 'notice';
    out.textContent = action + ' ' + name + '…';
    try {
      const r = await fetch('/chaos/' + encodeURIComponent(name) + '/' + encodeURIComponent(action), {
        method: 'POST', headers: { 'x-csrf-token': csrf(), accept: 'application/json' },
      });
      const v = await r.json();
      if (!r.ok) {
        out.className = 'notice bad';
        out.textContent = 'Refused: ' + ((v.error && v.error.message) || r.status);
        return;
      }
      await watch(name, action, v, out);
    } catch (e) {
      out.className = 'notice bad';
      out.textContent = 'The dashboard did not answer: ' + e;
    }
  });

  document.addEventListener('DOMContentLoaded', () => { tick(); refresher(); logs(); load(); });
})();
