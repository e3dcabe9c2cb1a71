// Load tiers for the public API through the edge, bounded in time:
//   k6 run -e TIER=gold -e BASE=http://127.0.0.1:8080 -e DURATION=30s k6/tiers.js
// bronze 50, silver 200, gold 500 virtual users; stress ramps to 1000.
// Traffic mix: 85% redirects of seed codes, 10% unknown codes (404),
// 5% link creation. Every request stays on the given BASE (loopback).
import http from 'k6/http';
import { check } from 'k6';

const TIERS = { bronze: 50, silver: 200, gold: 500, stress: 1000 };
const tier = __ENV.TIER || 'bronze';
const vus = TIERS[tier] || 50;
const base = __ENV.BASE || 'http://127.0.0.1:8080';
const duration = __ENV.DURATION || '30s';

export const options = tier === 'stress'
  ? { stages: [{ duration: '10s', target: vus }, { duration, target: vus }, { duration: '5s', target: 0 }] }
  : { vus, duration };

// Codes of active links of the seed set (first rows of urls.csv).
const codes = (__ENV.CODES || 'WqxP6K,M2buKp,pJoLPT').split(',');

export default function () {
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
