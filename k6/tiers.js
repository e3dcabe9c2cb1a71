// Load tiers for the public API through the edge, bounded in time:
//   k6 run -e TIER=gold -e BASE=http://127.0.0.1:8080 -e DURATION=30s k6/tiers.js
// bronze 50, silver 200, gold 500 virtual users; stress ramps to 1000;
// chaos: 100 virtual users of the paced user journey (MIX=original), to run
// while the dashboard's chaos panel breaks things.
// Every request stays on the given BASE (loopback).
//
// MIX=redirects (default): 85% redirects of seed codes, 10% unknown codes
// (404), 5% link creation, no pause: as many requests as the VUs can send.
// MIX=original: the original system's user journey, five requests per
// iteration (GET /health, POST /shorten, GET /urls?page=1&per_page=10,
// then two redirects of the new link) and a 1 s pause, as its gold tier
// paced its virtual users.
// RATE=N (with MIX=original): N iterations per second (5N requests/s),
// constant arrival rate, no pause; the VUs are only the concurrency.
import http from 'k6/http';
import { check, sleep } from 'k6';

const TIERS = { bronze: 50, silver: 200, gold: 500, stress: 1000, chaos: 100 };
const tier = __ENV.TIER || 'bronze';
const vus = TIERS[tier] || 50;
const base = __ENV.BASE || 'http://127.0.0.1:8080';
const duration = __ENV.DURATION || '30s';

const mix = __ENV.MIX || (tier === 'chaos' ? 'original' : 'redirects');
const rate = parseInt(__ENV.RATE || '0', 10);

// Per-route latency in the summary (thresholds create the sub-metrics;
// the bound is never meant to fail a run).
const perRoute = Object.fromEntries(['health', 'shorten', 'list', 'redirect', 'unknown']
  .map((r) => [`http_req_duration{route:${r}}`, ['max>=0']]));

export const options = rate > 0
  ? { thresholds: perRoute,
      scenarios: { fixed: { executor: 'constant-arrival-rate', rate, timeUnit: '1s', duration,
                            preAllocatedVUs: Math.max(50, rate), maxVUs: Math.max(500, rate * 4) } } }
  : tier === 'stress'
    ? { thresholds: perRoute, stages: [{ duration: '10s', target: vus }, { duration, target: vus }, { duration: '5s', target: 0 }] }
    : { thresholds: perRoute, vus, duration };

// Codes of active links of the seed set (first rows of urls.csv).
const codes = (__ENV.CODES || 'WqxP6K,M2buKp,pJoLPT').split(',');

function journey() {
  const h = http.get(`${base}/health`, { tags: { route: 'health' } });
  check(h, { 'health 200': (x) => x.status === 200 });
  const body = JSON.stringify({ original_url: `https://example.com/k6/${Math.random()}`, user_id: 1 });
  const c = http.post(`${base}/shorten`, body, { headers: { 'Content-Type': 'application/json' }, tags: { route: 'shorten' } });
  check(c, { 'created 201': (x) => x.status === 201 });
  const l = http.get(`${base}/urls?page=1&per_page=10`, { tags: { route: 'list' } });
  check(l, { 'list 200': (x) => x.status === 200 });
  const code = c.status === 201 ? c.json('short_code') : codes[0];
  for (let i = 0; i < 2; i++) {
    const r = http.get(`${base}/${code}`, { redirects: 0, tags: { route: 'redirect' } });
    check(r, { 'redirect 302': (x) => x.status === 302 });
  }
  if (rate === 0) sleep(1);
}

export default function () {
  if (mix === 'original') return journey();
  const r = Math.random();
  if (r < 0.85) {
    const code = codes[Math.floor(Math.random() * codes.length)];
    const res = http.get(`${base}/${code}`, { redirects: 0, tags: { route: 'redirect' } });
    check(res, { 'redirect 302': (x) => x.status === 302 });
  } else if (r < 0.95) {
    const res = http.get(`${base}/zz${Math.floor(Math.random() * 1e6)}`, { redirects: 0, tags: { route: 'unknown' } });
    check(res, { 'unknown 404': (x) => x.status === 404 });
  } else {
    const body = JSON.stringify({ original_url: `https://example.com/k6/${Math.random()}`, user_id: 1 });
    const res = http.post(`${base}/shorten`, body, { headers: { 'Content-Type': 'application/json' }, tags: { route: 'shorten' } });
    check(res, { 'created 201': (x) => x.status === 201 });
  }
}
