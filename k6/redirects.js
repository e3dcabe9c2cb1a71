// The high-rate, redirect-heavy scenario (what k6/tiers.js ran before the
// tiers took the original system's shape): 85% redirects of known codes,
// 10% unknown codes (404), 5% link creation, no pause: as many requests as
// the VUs can send. scripts/bench-pipeline.sh drives it.
//
//   k6 run -e VUS=500 -e DURATION=30s -e BASE=http://127.0.0.1:8080 -e CODES=a,b,c k6/redirects.js
//
// TIER=bronze|silver|gold|stress picks VUS (50, 200, 500, 1000).
// Thresholds: under 1% failed requests, p95 under 500 ms.
import { redirectMix, perRoute } from './lib.js';

const TIERS = { bronze: 50, silver: 200, gold: 500, stress: 1000 };
const vus = parseInt(__ENV.VUS || String(TIERS[__ENV.TIER || 'bronze'] || 50), 10);

export const options = {
  vus,
  duration: __ENV.DURATION || '30s',
  thresholds: Object.assign(perRoute(), {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<500'],
  }),
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  redirectMix();
}
