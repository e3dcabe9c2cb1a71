// Load tiers for the public API through the edge, with the original
// system's shape: its stages, its user journey and its pacing.
//
//   k6 run -e TIER=silver -e BASES=http://127.0.0.1:8080,http://127.0.0.1:8081 k6/tiers.js
//
//   bronze  50 VUs for 30 s
//   silver  ramp to 200 VUs (30 s), hold 30 s, ramp down
//   gold    ramp to 250 (20 s), to 500 (20 s), hold 40 s, ramp down
//   stress  ramp to 500, then to 1000, hold 30 s, ramp down (finds the knee)
//   chaos   100 VUs of the journey for 60 s, while something is being broken
//
// Each iteration is the original journey: GET /health, POST /shorten,
// GET /urls?page=1&per_page=10, two redirects of the new link, then a 1 s
// pause (PAUSE=seconds to change it). Thresholds fail the run: failed
// requests (no response, 4xx/5xx other than the expected ones) under 1% and
// p95 under the tier's bound (bronze 300 ms, silver 500 ms, gold 1000 ms;
// stress: under 5% failed, p95 2000 ms).
//
// One k6 process is one client address: the edge's per-IP rate limit
// (RATE_LIMIT_RPS, 50/s by default) will answer 429 long before gold. Run
// the edge with RATE_LIMIT_RPS/RATE_LIMIT_BURST raised for a capacity run
// (scripts/kill-matrix.sh and scripts/bench-gold.sh do).
//
// Options the benchmarks use:
//   DURATION=30s  hold the tier's peak VUs flat for that long (no stages)
//   RATE=N        N journeys per second (5N requests/s), constant arrival
//                 rate, no pause; the VUs are only the concurrency
//   MIX=redirects the redirect-heavy mix of k6/redirects.js instead of the
//                 journey (kept for old command lines)
import { journey, redirectMix, perRoute } from './lib.js';

const TIERS = {
  bronze: { peak: 50, p95: 300, failed: 0.01, stages: [{ duration: '30s', target: 50 }] },
  silver: { peak: 200, p95: 500, failed: 0.01,
            stages: [{ duration: '30s', target: 200 }, { duration: '30s', target: 200 }, { duration: '10s', target: 0 }] },
  gold: { peak: 500, p95: 1000, failed: 0.01,
          stages: [{ duration: '20s', target: 250 }, { duration: '20s', target: 500 }, { duration: '40s', target: 500 },
                   { duration: '10s', target: 0 }] },
  stress: { peak: 1000, p95: 2000, failed: 0.05,
            stages: [{ duration: '30s', target: 500 }, { duration: '30s', target: 1000 }, { duration: '30s', target: 1000 },
                     { duration: '10s', target: 0 }] },
  // The journey at 100 VUs, held while the dashboard's chaos panel (or
  // k6/chaos.js) breaks things; failures are expected, so its bound is loose.
  chaos: { peak: 100, p95: 2000, failed: 0.05, stages: [{ duration: '60s', target: 100 }] },
};
const tierName = __ENV.TIER || 'bronze';
const tier = TIERS[tierName];
if (!tier) throw new Error(`TIER must be one of ${Object.keys(TIERS).join(', ')}, not ${tierName}`);
const duration = __ENV.DURATION || '';
const rate = parseInt(__ENV.RATE || '0', 10);
const pause = __ENV.PAUSE === undefined ? 1 : parseFloat(__ENV.PAUSE);
const mix = __ENV.MIX || 'original';

const thresholds = Object.assign(perRoute(), {
  http_req_failed: [`rate<${tier.failed}`],
  http_req_duration: [`p(95)<${tier.p95}`],
});

export const options = {
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};
if (rate > 0) {
  options.scenarios = { fixed: { executor: 'constant-arrival-rate', rate, timeUnit: '1s', duration: duration || '30s',
                                 preAllocatedVUs: Math.max(50, rate), maxVUs: Math.max(500, rate * 4) } };
} else if (duration) {
  options.vus = tier.peak;
  options.duration = duration;
} else if (tierName === 'bronze') {
  options.vus = 50;
  options.duration = '30s';
} else {
  options.stages = tier.stages;
}

export default function () {
  if (mix === 'redirects') return redirectMix();
  journey(rate > 0 ? 0 : pause);
}
