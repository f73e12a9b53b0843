#!/usr/bin/env python3
"""The web console's speed in a real headless Chromium (bench/console.sh runs it):

    console.py API TOKEN_FILE DAEMON_PID WATCHERS SECONDS DIR_ENTRIES

Prints "key<TAB>value" lines. Every wait is bounded; the browser is gone at the end
(Tests/console/browser.py).
"""

import json
import os
import statistics
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "console"))
from browser import browser  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

api, token, pid, watchers, seconds, dir_entries = (sys.argv[1], open(sys.argv[2]).read().strip(), int(sys.argv[3]),
                                                   int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))


def call(method, path, body=None, timeout=30):
    r = urllib.request.Request(api + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                               headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def out(key, value):
    print("%s\t%s" % (key, value), flush=True)


def ms(xs):
    xs = sorted(xs)
    return "median %.0f ms, p90 %.0f ms, max %.0f ms (%d)" % (1000 * statistics.median(xs), 1000 * xs[int(0.9 * (len(xs) - 1))], 1000 * xs[-1], len(xs))


def until(d, js, seconds=30):
    WebDriverWait(d, seconds, poll_frequency=0.02).until(lambda d: d.execute_script(js))


# Jobs that run for the whole measure: 64 MiB each to wuxi at 256 KiB/s.
jobs = [call("POST", "/api/v1/transfers", {"source": "/data/big.bin", "destination": "ferry://wuxi/incoming/b%d.bin" % i, "bwlimit": 256 << 10})["id"]
        for i in range(10)]
for _ in range(100):
    if sum(1 for j in jobs if call("GET", "/api/v1/transfers/%d" % j)["state"] == "running") == len(jobs):
        break
    time.sleep(0.2)

with browser() as d:
    d.get(api + "/")
    until(d, "return document.body.dataset.ready === '1'")
    d.find_element(By.ID, "token").send_keys(token)
    d.find_element(By.ID, "signin-submit").click()
    until(d, "return document.getElementById('whoami').textContent.length > 0")
    # Each view loaded afresh (a new document, signed in by its cookie): first paint, and ready
    # when its table has rows.
    ready = {"overview": "#overview-states tbody tr", "files": "#datasets tbody tr", "jobs": "#jobs tbody tr"}
    for view, rows in ready.items():
        fcp, full = [], []
        for _ in range(5):
            d.get("about:blank")
            t0 = time.monotonic()
            d.get(api + "/#" + view)
            until(d, "return document.querySelectorAll(%r).length > 0" % rows)
            full.append(time.monotonic() - t0)
            paint = d.execute_script("const p = performance.getEntriesByName('first-contentful-paint')[0]; return p ? p.startTime : null")
            if paint is not None:
                fcp.append(paint / 1000)
        out("first_paint_" + view, ms(fcp))
        out("ready_" + view, ms(full))
    # Pages of 1,000 from the middle of the flat directory: click to the rows painted.
    d.get("about:blank")
    d.get(api + "/#files")
    until(d, "return document.querySelectorAll('#datasets tbody tr').length > 0")
    d.execute_script("""
        const name = 'm%08d.mol2';
        window.__t = null;
        loadEntries('gfs://' + app.session.center + '/flat/all', name);
    """ % (dir_entries // 2))
    until(d, "return document.querySelectorAll('#entries-body > div').length === 1000")
    pages = []
    for _ in range(40):
        took = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const body = document.getElementById('entries-body');
            const first = body.firstElementChild;
            const t0 = performance.now();
            const seen = new MutationObserver(() => {
                if (body.firstElementChild !== first && body.children.length > 0) {
                    seen.disconnect();
                    requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0));
                }
            });
            seen.observe(body, {childList: true});
            document.getElementById('entries-more').click();
        """)
        pages.append(took / 1000)
    out("page_of_1000_click_to_painted", ms(pages))
    # Of which the answer itself: the same request from the page, fetched and parsed.
    fetched = []
    for _ in range(20):
        took = d.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const t0 = performance.now();
            fetch('/api/v1/catalog/ls?path=' + encodeURIComponent('gfs://' + app.session.center + '/flat/all') + '&limit=1000&after=' + app.entries.after,
                  {credentials: 'same-origin'}).then(r => r.json()).then(() => done(performance.now() - t0), e => done(-1));
        """)
        fetched.append(took / 1000)
    out("page_of_1000_fetch_and_parse", ms(fetched))


def cpu():
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), time.monotonic()


def watcher(stop):
    """A console's open jobs view: a stream per running job shown, the list every 5 s."""
    streams = []
    try:
        for j in jobs:
            r = urllib.request.Request(api + "/api/v1/transfers/%d/events" % j, headers={"Authorization": "Bearer " + token})
            streams.append(urllib.request.urlopen(r, timeout=seconds + 30))

        def drain(s):
            try:
                while not stop.is_set() and s.readline():
                    pass
            except Exception:
                pass
        for s in streams:
            threading.Thread(target=drain, args=(s,), daemon=True).start()
        while not stop.wait(5):
            call("GET", "/api/v1/transfers?limit=100")
    finally:
        for s in streams:
            s.close()


c0 = cpu()
time.sleep(seconds)
c1 = cpu()
idle = (c1[0] - c0[0]) / (c1[1] - c0[1])
out("daemon_core_share_jobs_only", "%.1f %%" % (100 * idle))
stop = threading.Event()
threads = [threading.Thread(target=watcher, args=(stop,), daemon=True) for _ in range(watchers)]
for t in threads:
    t.start()
time.sleep(5)
c0 = cpu()
time.sleep(seconds)
c1 = cpu()
busy = (c1[0] - c0[0]) / (c1[1] - c0[1])
stop.set()
out("daemon_core_share_with_%d_watchers" % watchers, "%.1f %%" % (100 * busy))
out("watchers_cost", "%.1f %% of a core" % (100 * (busy - idle)))
for j in jobs:
    try:
        call("POST", "/api/v1/transfers/%d/cancel" % j)
    except Exception:
        pass
