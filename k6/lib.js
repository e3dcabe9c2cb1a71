// Shared pieces of the k6 scripts: the original system's user journey, the
// redirect-heavy mix, the bases to spread load over, per-route latency in
// the summary. Imported by tiers.js, redirects.js and chaos.js.
import http from 'k6/http';
import { check, sleep } from 'k6';

// BASES=http://a:8080,http://b:8081 spreads the load over several edges (an
// HA pair); BASE=... is the single-edge form. Every request stays on them.
export const bases = (__ENV.BASES || __ENV.BASE || 'http://127.0.0.1:8080')
  .split(',').map((s) => s.trim().replace(/\/$/, '')).filter((s) => s.length > 0);

// Codes of active links of the seed set (first rows of urls.csv).
export const codes = (__ENV.CODES || 'WqxP6K,M2buKp,pJoLPT').split(',').filter((c) => c.length > 0);

// The user that owns the links the scripts create (seed user 1 by default).
export const userId = parseInt(__ENV.USER_ID || '1', 10);

export const routes = ['health', 'shorten', 'list', 'redirect', 'unknown'];

// Per-route latency in the summary (a threshold creates the sub-metric; the
// bound never fails a run).
export function perRoute() {
  return Object.fromEntries(routes.map((r) => [`http_req_duration{route:${r}}`, ['max>=0']]));
}

// The base of this VU (VUs alternate over the bases) and the other one.
function pick() {
  const i = (__VU || 0) % bases.length;
  return [bases[i], bases[(i + 1) % bases.length]];
}

// k6's status 0 is a request that got no HTTP response (connection refused,
// reset, timeout). FAILOVER=1 sends it once more to the next base, as a
// client behind a virtual IP or DNS with two edges would; the first attempt
// still counts in http_req_failed (tag attempt:first), the retry is tagged
// attempt:failover.
const failover = (__ENV.FAILOVER || '1') !== '0' && bases.length > 1;

// A hook that sees every final response and its tags (chaos.js counts
// failures by phase and status with it), and one that adds tags to every
// request as it is sent (chaos.js: the phase at that moment).
let hook = null;
export function onResponse(fn) {
  hook = fn;
}
let tagger = null;
export function tagEach(fn) {
  tagger = fn;
}

export function send(method, path, body, params) {
  const [mine, other] = pick();
  const p = Object.assign({ redirects: 0 }, params || {});
  p.tags = Object.assign({ attempt: 'first' }, p.tags || {}, tagger ? tagger() : {});
  let res = http.request(method, `${mine}${path}`, body, p);
  if (res.status === 0 && failover) {
    p.tags = Object.assign({}, p.tags, { attempt: 'failover' });
    res = http.request(method, `${other}${path}`, body, p);
  }
  if (hook) hook(res, p.tags);
  return res;
}

const json = { 'Content-Type': 'application/json' };
// An unknown code's 404 is the expected answer, not a failed request.
const unknownOk = http.expectedStatuses({ min: 200, max: 399 }, 404);

export function shorten(tags) {
  const body = JSON.stringify({ original_url: `https://example.com/k6/${Date.now()}/${Math.random()}`, user_id: userId });
  const c = send('POST', '/shorten', body, { headers: json, tags: Object.assign({ route: 'shorten' }, tags || {}) });
  check(c, { 'created 201': (x) => x.status === 201 });
  return c;
}

export function redirect(code, tags) {
  const r = send('GET', `/${code}`, null, { tags: Object.assign({ route: 'redirect' }, tags || {}) });
  check(r, { 'redirect 302': (x) => x.status === 302 });
  return r;
}

// The original system's journey: GET /health, POST /shorten, GET /urls,
// then two redirects of the new link; `pause` seconds between iterations
// (the original paced its virtual users with a 1 s sleep).
export function journey(pause, tags) {
  const h = send('GET', '/health', null, { tags: Object.assign({ route: 'health' }, tags || {}) });
  check(h, { 'health 200': (x) => x.status === 200 });
  const c = shorten(tags);
  const l = send('GET', '/urls?page=1&per_page=10', null, { tags: Object.assign({ route: 'list' }, tags || {}) });
  check(l, { 'list 200': (x) => x.status === 200 });
  // The new link, or (when the write failed) a known one: tagged so a
  // report can tell cached known links from links never resolved yet.
  const fresh = c.status === 201;
  const code = fresh ? c.json('short_code') : codes[0];
  for (let i = 0; i < 2; i++) redirect(code, Object.assign({ link: fresh ? 'new' : 'known' }, tags || {}));
  if (pause > 0) sleep(pause);
}

// The redirect-heavy mix: 85% redirects of known codes, 10% unknown codes
// (404), 5% link creation, no pause.
export function redirectMix(tags) {
  const r = Math.random();
  if (r < 0.85) {
    redirect(codes[Math.floor(Math.random() * codes.length)], Object.assign({ link: 'known' }, tags || {}));
  } else if (r < 0.95) {
    const res = send('GET', `/zz${Math.floor(Math.random() * 1e6)}`, null,
      { tags: Object.assign({ route: 'unknown' }, tags || {}), responseCallback: unknownOk });
    check(res, { 'unknown 404': (x) => x.status === 404 });
  } else {
    shorten(tags);
  }
}
