#!/usr/bin/env python3
"""Requests/s at a p99 target per topology size (driven by scripts/capacity.sh).

Reuses the kill matrix's own PostgreSQL, Redis and broker
(scripts/kill_matrix.py) and runs `shortlink up --ha` with each
(edges, links replicas) pair in turn, the whole event pipeline included. For
each it runs the original journey (k6/tiers.js, constant arrival rate, no
pause) at rising rates through every edge, and reports p50/p95/p99 and the
failed share per step, and the highest rate whose p99 met the target with
under 0.1% failed.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kill_matrix as km  # noqa: E402


def step(m, rate, secs, work, tag):
    """One k6 run of `rate` journeys/s (5 requests each) spread over the edges."""
    out = os.path.join(work, f"cap-{tag}-{rate}.json")
    bases = m.bases()[: m.a.edges]
    # One k6 per edge would double its CPU; one k6 alternating VUs over the
    # edges (BASES) keeps the generator's share constant.
    cmd = ["k6", "run", "--quiet", "--no-color", "-e", f"BASES={','.join(bases)}", "-e", "TIER=gold",
           "-e", f"RATE={rate}", "-e", f"DURATION={secs}s", "-e", "FAILOVER=0",
           "--summary-export", out, os.path.join(km.ROOT, "k6", "tiers.js")]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=km.ROOT, timeout=secs + 120)
    with open(out) as f:
        s = json.load(f)["metrics"]
    d = s["http_req_duration"]
    return {
        "journeys_per_s": rate,
        "req_per_s": round(s["http_reqs"]["rate"], 1),
        "p50_ms": round(d["med"], 2),
        "p95_ms": round(d["p(95)"], 2),
        "p99_ms": round(d["p(99)"], 2),
        "failed": round(s["http_req_failed"]["value"], 5),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--tansu", required=True)
    ap.add_argument("--topologies", default="1x1,1x2,1x3,2x3", help="EDGESxREPLICAS, comma-separated")
    ap.add_argument("--rates", default="100,200,300,400,500", help="journeys/s (5 requests each)")
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--p99", type=float, default=50.0, help="the p99 target, ms")
    ap.add_argument("--port-base", type=int, default=27300)
    ap.add_argument("--json")
    a = ap.parse_args()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    results = []
    for topo in a.topologies.split(","):
        edges, replicas = (int(x) for x in topo.split("x"))
        args = argparse.Namespace(bin=a.bin, tansu=a.tansu, port_base=a.port_base, replicas=replicas, edges=edges)
        m = km.Matrix(args)
        try:
            m.start_backends()
            m.start_up(edges=edges)
            if m.wait_normal(180) is None:
                km.die(f"{topo}: up --ha did not become healthy")
            m.setup_phase("warm")
            steps, best = [], None
            for rate in (int(r) for r in a.rates.split(",")):
                s = step(m, rate, a.secs, m.work, topo)
                km.log(f"{topo}: {json.dumps(s)}")
                steps.append(s)
                if s["p99_ms"] <= a.p99 and s["failed"] < 0.001:
                    best = s["req_per_s"]
                else:
                    break
            results.append({"edges": edges, "replicas": replicas, "steps": steps, "best_req_per_s": best})
        finally:
            m.teardown()
            import shutil
            shutil.rmtree(m.work, ignore_errors=True)
    res = {"load_before": load, "machine": km.machine(), "p99_target_ms": a.p99, "secs": a.secs, "results": results}
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
