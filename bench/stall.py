"""Load for the daemon API (bench/stall.sh): pollers, watchers, job submissions and a catalog
registration under a new name each time (every entry
written again) repeated, all at once, for a fixed time. Every request opens a new connection
(as hooks and scripts do) with a 30 s timeout. Prints key<TAB>value lines."""
import asyncio, json, sys, threading, time, urllib.request, urllib.error, http.client

api, tokfile, clients, watchers, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
hooks = int(sys.argv[6]) if len(sys.argv) > 6 else 0
scratch = sys.argv[7] if len(sys.argv) > 7 else "/scratch"  # the export's real path: directives name real paths
files = int(sys.argv[8]) if len(sys.argv) > 8 else 1  # 0: no registration running beside
tok = open(tokfile).read().strip()
lock = threading.Lock()
lat, errors, done_at, ended = [], [], [], []
by_kind = {}  # "METHOD /path" (ids and queries cut) -> latencies
stop = time.time() + seconds


def call(method, path, body=None, timeout=30):
    req = urllib.request.Request(api + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def timed(method, path, body=None):
    t0 = time.time()
    try:
        r = call(method, path, body)
        t1 = time.time()
        kind = method + " " + "/".join("{id}" if p.isdigit() else p for p in path.split("?")[0].split("/"))
        with lock:
            lat.append(t1 - t0); done_at.append(t1); ended.append((t1, t1 - t0)); by_kind.setdefault(kind, []).append(t1 - t0)
        return r
    except Exception as e:  # a timeout, a refused or reset connection, a 5xx
        with lock:
            errors.append("%s %s after %.1f s: %r" % (method, path, time.time() - t0, e))
        return None


def poller(k):
    paths = ["/api/v1/transfers?limit=20", "/api/v1/health", "/api/v1/transfers?state=running", "/api/v1/catalog/datasets"]
    i = k
    while time.time() < stop:
        timed("GET", paths[i % len(paths)])
        i += 1
        time.sleep(0.2)


def submitter():
    i = 0
    while time.time() < stop:
        timed("POST", "/api/v1/transfers", {"source": "/scratch/in/f%02d" % (i % 64), "destination": "ferry://wuxi/incoming/f%06d" % i})
        i += 1
        time.sleep(0.05)


def registrar():
    n = 0
    while time.time() < stop:
        t0 = time.time()
        try:
            call("POST", "/api/v1/catalog/register", {"path": "/scratch/tree", "dataset": "tree%d" % n, "readers": ["*"]}, timeout=600)
            n += 1
        except Exception as e:
            with lock: errors.append("register: %r" % e)
            time.sleep(1)
    with lock: stats["registrations"] = n


# The hooks are coroutines of one asyncio loop, not threads: with 1,000 threads and urllib the
# load generator itself took 1.2 cores of the two and the daemon 0.6, and a thread waited for
# Python's lock long after its answer had come (latencies measured the client). Each request
# opens its own connection, as a hook's `ferry stage` call does.
host, port = api.split("//", 1)[1].rsplit(":", 1)


async def acall(method, path, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else b""
    async def go():
        r, w = await asyncio.open_connection(host, int(port))
        try:
            w.write(("%s %s HTTP/1.1\r\nHost: %s:%s\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n" % (method, path, host, port, tok, len(data))).encode() + data)
            raw = await r.read()
        finally:
            w.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status >= 300: raise RuntimeError("HTTP %d: %s" % (status, payload[:200]))
        return json.loads(payload)
    return await asyncio.wait_for(go(), timeout)


async def atimed(method, path, body=None):
    t0 = time.time()
    try:
        r = await acall(method, path, body)
        t1 = time.time()
        kind = method + " " + "/".join("{id}" if p.isdigit() else p for p in path.split("?")[0].split("/"))
        lat.append(t1 - t0); done_at.append(t1); ended.append((t1, t1 - t0)); by_kind.setdefault(kind, []).append(t1 - t0)
        return r
    except Exception as e:  # a timeout, a refused or reset connection, a 4xx or 5xx
        errors.append("%s %s after %.1f s: %r" % (method, path, time.time() - t0, e))
        return None


async def hook(k):
    """A scheduler's stage-in hook, job after job: ask until the input is ready (as
    `ferry stage-in --wait` does, once a second), read the status, tear down."""
    await asyncio.sleep(k / max(1, hooks))  # hooks start spread over the first second
    n = 0
    while time.time() < stop:
        job = "%d-%d" % (k, n)
        body = {"job": job, "user": "bench", "directives": [{"direction": "stage_in", "source": "ferry://wuxi/archive/f%02d" % ((k + n) % 64),
                "destination": "%s/jobs/%s/in" % (scratch, job), "optional": False, "checksum": False, "line": 2}]}
        t0 = time.time()
        state = ""
        while time.time() < stop:
            r = await atimed("POST", "/api/v1/stage/in", body)
            state = r["items"][0]["state"] if r else ""
            if state in ("ready", "failed"): break
            await asyncio.sleep(1)
        if state == "ready":
            staged.append(time.time() - t0)
        elif state == "failed":
            errors.append("stage-in %s failed: %s" % (job, r["items"][0].get("error")))
        elif time.time() < stop:
            errors.append("stage-in %s: no answer" % job)
        await atimed("GET", "/api/v1/stage/status?job=" + job)
        await atimed("POST", "/api/v1/stage/teardown", {"job": job})
        n += 1
        # The next job's hook: a scheduler runs one per job, not a new one in the same instant.
        # Without this pause a hook whose inputs were ready at once asked again at once, and
        # K hooks were K clients in a closed loop (a throughput test), not K jobs polling.
        await asyncio.sleep(1)


lag = []


async def lagger():
    """The load generator's own delay: how late a 50 ms sleep of its loop wakes. A request's
    measured time includes this much of the client's (reported, so that a slow client is not
    read as a slow daemon)."""
    while time.time() < stop:
        t0 = time.monotonic()
        await asyncio.sleep(0.05)
        lag.append(time.monotonic() - t0 - 0.05)


async def all_hooks():
    await asyncio.gather(lagger(), *(hook(k) for k in range(hooks)))


def watcher(k):
    while time.time() < stop:
        t0 = time.time()
        try:
            req = urllib.request.Request(api + "/api/v1/transfers/%d/events" % (1 + k), headers={"Authorization": "Bearer " + tok})
            with urllib.request.urlopen(req, timeout=30) as r:
                while time.time() < stop:
                    if not r.readline(): break
        except Exception:
            pass  # a job that does not exist yet, or its stream ended
        time.sleep(0.5)


stats = {}
staged = []
threads = [threading.Thread(target=poller, args=(k,), daemon=True) for k in range(clients)]
threads += [threading.Thread(target=watcher, args=(k,), daemon=True) for k in range(watchers)]
threads += [threading.Thread(target=submitter, daemon=True)]
if files > 0: threads += [threading.Thread(target=registrar, daemon=True)]
t_start = time.time()
for t in threads: t.start()
if hooks > 0:
    try:
        import uvloop  # bench/stall.sh installs it in /opt/ferry-bench-venv
        uvloop.install()
        print("loop\tuvloop")
    except ImportError:
        print("loop\tasyncio")
    asyncio.run(all_hooks())  # in this thread; the lists are appended under the GIL
for t in threads: t.join(timeout=max(0.1, stop + 120 - time.time()))
lat.sort()
def pct(p): return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
times = sorted([t_start] + done_at + [stop])
gap = max(b - a for a, b in zip(times, times[1:]))
staged.sort()
print("stage_ins\t%d\nstage_in_max_s\t%.1f" % (len(staged), staged[-1] if staged else float("nan")))
print("requests\t%d\nerrors\t%d\np50_ms\t%.1f\np99_ms\t%.1f\nmax_ms\t%.1f\nover_1s\t%d\nlongest_silence_s\t%.1f\nregistrations\t%s" % (
    len(lat), len(errors), pct(0.5) * 1000, pct(0.99) * 1000, (lat[-1] if lat else float("nan")) * 1000,
    sum(1 for x in lat if x > 1), gap, stats.get("registrations", "unfinished")))
# When the slow answers came: requests over 1 s per 10 s of the run (by the time they ended).
slow = {}
for t1, took in ended:
    if took > 1: slow[int((t1 - t_start) // 10) * 10] = slow.get(int((t1 - t_start) // 10) * 10, 0) + 1
print("over_1s_by_10s\t" + " ".join("%d:%d" % (k, slow[k]) for k in sorted(slow)))
if lag:
    lag.sort()
    print("client_lag_p99_ms\t%.1f\nclient_lag_max_ms\t%.1f" % (lag[min(len(lag) - 1, int(0.99 * len(lag)))] * 1000, lag[-1] * 1000))
# Per kind of request (the bar is for job and catalog reads): count, p50, p99, max.
for kind in sorted(by_kind):
    v = sorted(by_kind[kind])
    print("kind\t%s\t%d\tp50_ms %.1f\tp99_ms %.1f\tmax_ms %.1f" % (kind, len(v), v[len(v) // 2] * 1000, v[min(len(v) - 1, int(0.99 * len(v)))] * 1000, v[-1] * 1000))
for e in errors[:5]:
    print("error: " + e, file=sys.stderr)
