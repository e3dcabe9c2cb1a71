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
      try {
        const r = await fetch(location.href, { headers: { 'x-partial': '1' } });
        if (r.ok) { m.outerHTML = await r.text(); tick(); }
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
      out.className = r.ok ? 'notice good' : 'notice bad';
      out.textContent = r.ok ? action + ' ' + name + ': now ' + v.state : 'Refused: ' + ((v.error && v.error.message) || r.status);
    } catch (e) {
      out.className = 'notice bad';
      out.textContent = 'The dashboard did not answer: ' + e;
    }
  });

  document.addEventListener('DOMContentLoaded', () => { tick(); refresher(); logs(); load(); });
})();
