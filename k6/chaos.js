// Chaos presets: hold load through the edges while a second scenario acts on
// components through the watchdog's control API on a schedule, and report
// requests, failures (by status) and latency per phase.
//
//   k6 run -e PRESET=replica -e BASES=http://127.0.0.1:8080,http://127.0.0.1:8081 \
//          -e WATCHDOG=http://127.0.0.1:9190 -e WATCHDOG_TOKEN=$(cat data/ha/watchdog-token) k6/chaos.js
//
// PRESET (the schedule; times from the start of the run):
//   replica   15 s kill links-2 (the watchdog restarts it)
//   edge      15 s kill edge-2 (clients fail over to edge-1, FAILOVER=1)
//   consumer  15 s kill analytics (clicks wait in the broker, then catch up)
//   pause     15 s pause links-1 (a hung replica), 35 s resume it
//   admin     15 s restart admin
//   tour      all of the above one after another (the default; 150 s)
// or SCHEDULE="15s kill links-2; 40s pause links-1; 50s resume links-1",
// entries "<at> <action> <component>", action kill|stop|start|restart|pause|
// resume, or "mark" to only start a named phase.
//
// Redis, the broker and the app database are not the watchdog's children:
// no control-API action reaches them, and k6 cannot run commands. For them
// scripts/kill-matrix.sh runs this script with a SCHEDULE of "mark"
// entries (e.g. "15s mark redis-down; 35s mark redis-back") and kills and
// restarts the process itself at those times, so the per-phase report is
// the same.
//
// Load: VUS virtual users (default 200, silver's peak) for DURATION (default
// the preset's), each running MIX=journey (the original journey, PAUSE=1 s
// between iterations) or MIX=redirects (the redirect-heavy mix, no pause).
// Thresholds (fail the run): the load's failed requests under 1% overall.
// SUMMARY=file.json also writes the per-phase numbers as JSON.
import http from 'k6/http';
import { sleep } from 'k6';
import { Counter } from 'k6/metrics';
import { journey, redirectMix, perRoute, onResponse, tagEach } from './lib.js';

const PRESETS = {
  replica: { duration: '45s', schedule: '15s kill links-2' },
  edge: { duration: '45s', schedule: '15s kill edge-2' },
  consumer: { duration: '45s', schedule: '15s kill analytics' },
  pause: { duration: '55s', schedule: '15s pause links-1; 35s resume links-1' },
  admin: { duration: '45s', schedule: '15s restart admin' },
  tour: { duration: '150s',
          schedule: '15s kill links-2; 40s kill edge-2; 65s pause links-1; 80s resume links-1; 105s kill analytics; 125s restart admin' },
};

const presetName = __ENV.PRESET || 'tour';
const preset = __ENV.SCHEDULE ? { duration: '60s', schedule: __ENV.SCHEDULE } : PRESETS[presetName];
if (!preset) throw new Error(`PRESET must be one of ${Object.keys(PRESETS).join(', ')}, not ${presetName}`);
const duration = __ENV.DURATION || preset.duration;
const watchdog = (__ENV.WATCHDOG || 'http://127.0.0.1:9190').replace(/\/$/, '');
const token = __ENV.WATCHDOG_TOKEN || '';
const mix = __ENV.MIX || 'journey';
const pause = __ENV.PAUSE === undefined ? 1 : parseFloat(__ENV.PAUSE);
const ACTIONS = ['kill', 'stop', 'start', 'restart', 'pause', 'resume', 'mark'];

function seconds(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s);
  if (!m) throw new Error(`bad time ${s} in the schedule`);
  const v = parseFloat(m[1]);
  return m[2] === 'ms' ? v / 1000 : m[2] === 'm' ? v * 60 : v;
}

// [{at, action, target, phase}], sorted by time.
const schedule = preset.schedule.split(';').map((e) => e.trim()).filter((e) => e.length > 0).map((e, i) => {
  const [at, action, target] = e.split(/\s+/);
  if (!ACTIONS.includes(action) || !target) throw new Error(`bad schedule entry "${e}": "<at> <action> <component>", action one of ${ACTIONS.join('|')}`);
  return { at: seconds(at), action, target, phase: `p${i + 1}-${action}-${target}` };
}).sort((a, b) => a.at - b.at);
const phases = ['p0-baseline'].concat(schedule.map((s) => s.phase));

function phaseAt(elapsed) {
  let p = phases[0];
  for (const s of schedule) if (elapsed >= s.at) p = s.phase;
  return p;
}

// Failed load requests by phase and status (0 = no HTTP response), and
// what the kill matrix compares with the event pipeline: redirects served
// (302), responses on non-health routes, failed redirects.
const failures = new Counter('load_failures');
const requests = new Counter('load_requests');
const redirects302 = new Counter('load_redirects_302');
const served = new Counter('load_served_non_health');
const redirectFailures = new Counter('load_redirect_failures');
// Failed redirects of known links (created before the run and resolved
// once, so cached): these must not fail while Redis, the broker or the app
// database is down.
const knownRedirectFailures = new Counter('load_known_redirect_failures');
// ACK_LOG=1 logs "ACK <code>" for every 201 (the kill matrix checks each
// acknowledged write is in the database afterwards).
const ackLog = __ENV.ACK_LOG === '1';
const STATUSES = ['0', '400', '404', '409', '429', '500', '502', '503', '504'];

const thresholds = Object.assign(perRoute(), {
  'http_req_failed{kind:load}': ['rate<0.01'],
  load_redirects_302: ['count>=0'],
  load_served_non_health: ['count>=0'],
  load_redirect_failures: ['count>=0'],
  load_known_redirect_failures: ['count>=0'],
});
for (const p of phases) {
  thresholds[`http_reqs{kind:load,phase:${p}}`] = ['count>=0'];
  thresholds[`load_requests{phase:${p}}`] = ['count>=0'];
  thresholds[`http_req_failed{kind:load,phase:${p}}`] = ['rate>=0'];
  thresholds[`http_req_duration{kind:load,phase:${p}}`] = ['max>=0'];
  for (const s of STATUSES) thresholds[`load_failures{phase:${p},status:${s}}`] = ['count>=0'];
}

export const options = {
  scenarios: {
    load: { executor: 'constant-vus', vus: parseInt(__ENV.VUS || '200', 10), duration, exec: 'load' },
    chaos: { executor: 'shared-iterations', vus: 1, iterations: 1, maxDuration: duration, exec: 'chaos' },
  },
  thresholds,
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  return { t0: Date.now() };
}

onResponse((res, tags) => {
  if (tags.kind !== 'load') return;
  const expected = (res.status >= 200 && res.status < 400) || (tags.route === 'unknown' && res.status === 404);
  requests.add(1, { phase: tags.phase });
  if (!expected) failures.add(1, { phase: tags.phase, status: String(res.status) });
  if (res.status !== 0 && tags.route !== 'health') served.add(1);
  if (tags.route === 'redirect') {
    if (res.status === 302) redirects302.add(1); else redirectFailures.add(1);
    if (res.status !== 302 && tags.link === 'known') knownRedirectFailures.add(1, { phase: tags.phase });
  }
  if (ackLog && tags.route === 'shorten' && res.status === 201) console.log(`ACK ${res.json('short_code')}`);
});

// Each request carries the phase of the moment it is sent.
let t0 = 0;
tagEach(() => ({ phase: phaseAt((Date.now() - t0) / 1000) }));

export function load(data) {
  t0 = data.t0;
  const tags = { kind: 'load' };
  if (mix === 'redirects') redirectMix(tags); else journey(0, tags);
  if (mix !== 'redirects' && pause > 0) sleep(pause);
}

export function chaos(data) {
  for (const s of schedule) {
    const wait = s.at - (Date.now() - data.t0) / 1000;
    if (wait > 0) sleep(wait);
    if (s.action === 'mark') {
      console.log(`chaos: phase ${s.phase}`);
      continue;
    }
    const r = http.post(`${watchdog}/components/${s.target}/${s.action}`, null,
      { headers: { Authorization: `Bearer ${token}` }, tags: { kind: 'chaos', route: 'control' }, responseCallback: http.expectedStatuses(200) });
    console.log(`chaos: ${s.action} ${s.target} -> ${r.status} ${r.status === 200 ? '' : r.body}`);
  }
}

function fmt(v, d) {
  return v === undefined || v === null ? '-' : Number(v).toFixed(d);
}

export function handleSummary(data) {
  const m = data.metrics;
  const rows = phases.map((p) => {
    const attempts = (m[`http_reqs{kind:load,phase:${p}}`] || { values: {} }).values.count || 0;
    const attemptsFailed = Math.round(attempts * ((m[`http_req_failed{kind:load,phase:${p}}`] || { values: {} }).values.rate || 0));
    const reqs = (m[`load_requests{phase:${p}}`] || { values: {} }).values.count || 0;
    const dur = (m[`http_req_duration{kind:load,phase:${p}}`] || { values: {} }).values;
    const byStatus = {};
    for (const s of STATUSES) {
      const c = (m[`load_failures{phase:${p},status:${s}}`] || { values: {} }).values.count || 0;
      if (c > 0) byStatus[s] = c;
    }
    const failed = Object.values(byStatus).reduce((a, b) => a + b, 0);
    return { phase: p, requests: reqs, failed, attempts, attempts_failed: attemptsFailed,
             p95_ms: dur['p(95)'], p99_ms: dur['p(99)'], max_ms: dur.max, failed_by_status: byStatus };
  });
  let text = `\nchaos preset ${__ENV.SCHEDULE ? 'SCHEDULE' : presetName}: per phase (load requests only; failed = what the client`
    + ' saw after failing over to the other edge; attempts counts both tries)\n';
  text += `${'phase'.padEnd(28)} ${'requests'.padStart(9)} ${'failed'.padStart(7)} ${'attempts'.padStart(9)} ${'att.fail'.padStart(8)} ${'p95 ms'.padStart(8)} ${'p99 ms'.padStart(8)}  failed by status\n`;
  for (const r of rows) {
    text += `${r.phase.padEnd(28)} ${String(r.requests).padStart(9)} ${String(r.failed).padStart(7)} ${String(r.attempts).padStart(9)} ${String(r.attempts_failed).padStart(8)} ${fmt(r.p95_ms, 1).padStart(8)} ${fmt(r.p99_ms, 1).padStart(8)}  ${JSON.stringify(r.failed_by_status)}\n`;
  }
  const out = { stdout: text };
  const count = (name) => ((m[name] || { values: {} }).values.count || 0);
  const counts = { redirects_302: count('load_redirects_302'), served_non_health: count('load_served_non_health'),
                   redirect_failures: count('load_redirect_failures'),
                   known_redirect_failures: count('load_known_redirect_failures') };
  text += `redirects served ${counts.redirects_302}, failed redirects ${counts.redirect_failures} (of known, cached links ${counts.known_redirect_failures}), responses on non-health routes ${counts.served_non_health}\n`;
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify({ preset: __ENV.SCHEDULE ? 'SCHEDULE' : presetName, schedule, phases: rows, counts }, null, 1);
  return out;
}
