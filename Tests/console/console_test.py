#!/usr/bin/env python3
"""The web console in a real headless Chromium (issue 15), against a real daemon that
Tests/EndToEndTests/ConsoleTests.swift started and filled. Run by that test:

    console_test.py CONFIG.json

CONFIG: api (http://127.0.0.1:PORT), alice_token and bob_token (the tokens' text), running and
victim (two of alice's running jobs: one the user cancels, one a forged cross-site POST tries
to), shots (a directory for screenshots). alice owns the datasets "public" (readers *, 250 files
and two named like markup) and "private" (alice only).

Prints one line per check; exits 0 when every check held, 1 at the first that did not. Bounded:
every wait 10 s at most, the whole run 150 s (a watchdog).
"""

import http.server
import json
import os
import signal
import sys
import threading
import time
import urllib.request

from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser import browser  # noqa: E402

cfg = json.load(open(sys.argv[1]))
API = cfg["api"]
failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)
        raise AssertionError(what)


def wait(driver, cond, what, seconds=10):
    try:
        # A table re-rendered under the check: asked again at the next poll.
        return WebDriverWait(driver, seconds, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]).until(lambda d: cond(d))
    except TimeoutException:
        check(False, (what() if callable(what) else what) + " (waited %d s)" % seconds)


def by_id(driver, i):
    return driver.find_element(By.ID, i)


def visible(driver, i):
    return driver.execute_script("const e = document.getElementById(arguments[0]); return !!e && !e.hidden", i)


def api(method, path, token):
    """The API itself, as the CLI calls it (a bearer token), to see what the browser did."""
    req = urllib.request.Request(API + path, method=method, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def page_fetch(driver, method, path):
    """A fetch from the console's own page (its cookie, no CSRF header): the status."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: arguments[1], credentials: 'same-origin'}).then(r => done(r.status), e => done(String(e)));",
        path, method)


def shot(driver, name):
    """The whole page (the window made as tall as it, at most 2,400 pixels), then as before."""
    os.makedirs(cfg["shots"], exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, min(2400, height + 100)))
    driver.save_screenshot(os.path.join(cfg["shots"], name + ".png"))
    driver.set_window_size(1280, 800)


CONTRAST_JS = """
// WCAG 2 contrast of every visible element that holds text, against the first opaque
// background behind it: the lowest ratios that fall short (4.5:1, or 3:1 for large text).
function lum(c) {
  const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
function rgba(text) { const m = text.match(/[\\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; }
function background(e) {
  for (; e; e = e.parentElement) { const c = rgba(getComputedStyle(e).backgroundColor); if (c[3] > 0.5) return c; }
  return [255, 255, 255, 1];
}
const short = [];
let checked = 0;
for (const e of document.querySelectorAll('body *')) {
  if (!e.offsetParent && getComputedStyle(e).position !== 'fixed') continue;
  if (!Array.from(e.childNodes).some(n => n.nodeType === 3 && n.textContent.trim())) continue;
  const st = getComputedStyle(e);
  if (st.visibility === 'hidden' || parseFloat(st.opacity) === 0) continue;
  checked++;
  const fg = rgba(st.color), bg = background(e);
  const a = lum(fg), b = lum(bg);
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(st.fontSize), bold = parseInt(st.fontWeight) >= 700;
  const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
  if (ratio < need) short.push(e.tagName + ' "' + e.textContent.trim().slice(0, 30) + '" ' + ratio.toFixed(2));
}
return [checked, short];
"""


def contrast(driver, where):
    checked, short = driver.execute_script(CONTRAST_JS)
    check(checked >= 20 and not short, "text contrast passes WCAG AA on %s (%d elements with text): %r" % (where, checked, short[:5]))


def press(driver, key):
    """One key pressed, as on a keyboard: it goes to whatever has the focus. (Sending it to the
    focused element found a moment before failed once under load, "element not interactable",
    when the page re-rendered in between.)"""
    ActionChains(driver).send_keys(key).perform()


def tab_to(driver, match, what, presses=80):
    """Tab, as a keyboard user would, until the focused element is the one `match` accepts
    (given its id, text and aria-label); every element reached on the way, as (id, text, label)."""
    reached = []
    for _ in range(presses):
        press(driver, Keys.TAB)
        e = driver.switch_to.active_element
        seen = (e.get_attribute("id") or "", e.text or "", e.get_attribute("aria-label") or "")
        reached.append(seen)
        if match(*seen):
            return reached
    check(False, "Tab reaches %s (%d presses: %r)" % (what, presses, reached[-12:]))


def sign_in(driver, token, user):
    driver.get(API + "/")
    wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1", "the console loads")
    check(visible(driver, "view-signin"), "signed out, the console shows its sign-in form")
    box = by_id(driver, "token")
    box.clear()
    box.send_keys(token)
    by_id(driver, "signin-submit").click()
    wait(driver, lambda d: user in by_id(d, "whoami").text, "signed in as " + user)
    # The session is a cookie the page's script cannot read.
    check(driver.execute_script("return document.cookie") == "", "the session cookie is HttpOnly (document.cookie is empty)")
    jar = {c["name"]: c for c in driver.get_cookies()}
    c = jar.get("ferry_session", {})
    check(c.get("httpOnly") is True and c.get("sameSite") == "Strict", "the cookie is HttpOnly and SameSite=Strict: %r" % c)


def evil_server(target):
    """Another origin (another port of 127.0.0.1) whose page posts a form to `target` at once."""
    page = ("<!doctype html><html><body><form id=f method=POST action='%s'>"
            "<input type=hidden name=x value=1></form>"
            "<script>document.getElementById('f').submit()</script></body></html>" % target).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *a):
            pass

    s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    s.daemon_threads = True
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s


def federation(d):
    """Through federation: alice at hlrs browses wuxi's 100,000-entry directory a page at a time
    and replicates a small dataset of wuxi's, watching the job to success without a reload."""
    sign_in(d, cfg["alice_token"], "alice")
    d.execute_script("window.__sameDocument = 1")
    by_id(d, "nav-files").click()
    wait(d, lambda d: "big" in by_id(d, "datasets").text and "wuxi" in by_id(d, "datasets").text, "wuxi's datasets are listed at hlrs")
    d.find_element(By.XPATH, "//table[@id='datasets']//button[text()='big']").click()
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entries-body > div")) == 1000, "a first page of 1,000 entries")
    seen = set()
    times = []
    for page in range(1, 121):
        names = d.execute_script("return Array.from(document.querySelectorAll('#entries-body a.entry'), b => b.textContent)")
        seen.update(names)
        if not visible(d, "entries-more"):
            break
        first = names[0]
        t0 = time.monotonic()
        by_id(d, "entries-more").click()
        wait(d, lambda d: d.execute_script("const b = document.querySelector('#entries-body a.entry'); return b && b.textContent") != first, "page %d loads" % (page + 1))
        times.append(time.monotonic() - t0)
    times.sort()
    print("pages: %d, click to rendered page of 1,000: median %.0f ms, max %.0f ms" % (len(times) + 1, 1000 * times[len(times) // 2], 1000 * times[-1]))
    check(len(seen) == 100000 and page == 100, "100 pages of 1,000 hold all 100,000 entries, each once (%d, %d pages)" % (len(seen), page))
    shot(d, "files-big-en")
    # Find in that directory: a literal start (the name index) and a glob that ends the name
    # (a read in key order, in as many requests as the daemon's budget takes).
    for glob, want in [("e0999*", ["e0999%02d" % k for k in range(100)]), ("*777", ["e%03d777" % k for k in range(100)])]:
        by_id(d, "find-name").clear()
        by_id(d, "find-name").send_keys(glob)
        by_id(d, "find-submit").click()
        wait(d, lambda d: d.execute_script("return Array.from(document.querySelectorAll('#entries-body a.entry'), b => b.textContent)") == want,
             "find %s lists its %d entries in order" % (glob, len(want)))
    # Replicate a small dataset of wuxi's to hlrs from its entry's page; the job is watched.
    by_id(d, "files-crumbs").find_element(By.TAG_NAME, "button").click()
    wait(d, lambda d: "small" in by_id(d, "datasets").text, "back to the datasets")
    d.find_element(By.XPATH, "//table[@id='datasets']//button[text()='small']").click()
    wait(d, lambda d: len(d.find_elements(By.XPATH, "//div[@id='entries']//a[text()='a.bin']")) == 1, "the small dataset's file")
    d.find_element(By.XPATH, "//div[@id='entries']//a[text()='a.bin']").click()
    wait(d, lambda d: visible(d, "details") and "wuxi" in by_id(d, "replicas").text, "its replica at wuxi is shown")
    shot(d, "entry-replicas-en")
    # Copy it from its best replica to a path of hlrs: one job.
    by_id(d, "copy-to").send_keys("/data/copy-a.bin")
    by_id(d, "copy-submit").click()
    wait(d, lambda d: by_id(d, "copy-submit").get_attribute("data-job"), "the copy has a job")
    copy = int(by_id(d, "copy-submit").get_attribute("data-job"))
    by_id(d, "replicate").click()
    wait(d, lambda d: by_id(d, "replicate").get_attribute("data-job"), "the replication has a job")
    job = int(by_id(d, "replicate").get_attribute("data-job"))
    by_id(d, "nav-jobs").click()
    wait(d, lambda d: len(d.find_elements(By.ID, "job-%d" % job)) == 1, "the replication job is listed")
    wait(d, lambda d: d.find_element(By.ID, "job-%d" % job).get_attribute("data-state") == "success", "the replication reaches success on the page, no reload", 60)
    wait(d, lambda d: d.find_element(By.ID, "job-%d" % copy).get_attribute("data-state") == "success", "the copy reaches success", 60)
    check(d.execute_script("return window.__sameDocument === 1"), "the same page all along (no reload)")
    # The job's details: where it waits for nothing, its one attempt and how it ended.
    d.find_element(By.XPATH, "//tr[@id='job-%d']//button[text()='#%d']" % (job, job)).click()
    wait(d, lambda d: visible(d, "job-details") and len(d.find_elements(By.CSS_SELECTOR, "#job-attempts tbody tr")) == 1, "the job's details list its attempt")
    check("Success" in d.find_element(By.CSS_SELECTOR, "#job-attempts tbody tr").text, "the attempt led to success")
    check("wuxi" in by_id(d, "job-fields").text, "the job's peer is shown")
    shot(d, "job-details-en")
    # Filters: by peer (wuxi: the replication; csc: nothing).
    for peer, expect in (("csc", False), ("wuxi", True)):
        box = by_id(d, "jobs-peer")
        box.clear()
        box.send_keys(peer)
        by_id(d, "jobs-refresh").click()
        wait(d, lambda d: (len(d.find_elements(By.ID, "job-%d" % job)) == 1) == expect, "jobs with peer %s: the replication %s" % (peer, "listed" if expect else "not listed"))
    # The overview counts the replication's bytes for peer wuxi, today and in the last hour.
    by_id(d, "nav-overview").click()
    today = time.strftime("%Y-%m-%d", time.gmtime())
    # (The stage-in, the copy and the replication each moved the 256 KiB file from wuxi, job 9's
    # stage-in 128 KiB: an operator sees all four.)
    wait(d, lambda d: any(today in r.text and "wuxi" in r.text and "896.0 KiB" in r.text for r in d.find_elements(By.CSS_SELECTOR, "#overview-days tbody tr")),
         "bytes moved today from wuxi (3 x 256 KiB and job 9's 128 KiB) are in the overview")
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#overview-hour tbody tr svg polyline")) >= 1 and "wuxi" in by_id(d, "overview-hour").text,
         "wuxi's throughput over the last hour is drawn")
    wait(d, lambda d: "quota" in by_id(d, "overview-staging").text and "1 evicted" in by_id(d, "overview-staging").text,
         "the overview shows the staging cache's use against its quota and the eviction: %r" % by_id(d, "overview-staging").text)
    shot(d, "overview-federation-en")
    # Staging (alice's token is an operator's here): the entry job 8 pins, and the quota.
    check(visible(d, "nav-staging"), "an operator sees the Staging view")
    by_id(d, "nav-staging").click()
    wait(d, lambda d: "gfs://wuxi/small" in by_id(d, "staging").text, "the staged entry is listed")
    rows = [r.text for r in d.find_elements(By.CSS_SELECTOR, "#staging tbody tr")]
    check(any("ready" in r and "8" in r for r in rows), "ready, pinned by scheduler job 8: %r" % rows)
    check("quota" in by_id(d, "staging-use").text, "its use against the quota: %r" % by_id(d, "staging-use").text)
    evictions = [r.text for r in d.find_elements(By.CSS_SELECTOR, "#staging-evictions tbody tr")]
    check(len(evictions) == 1 and "gfs://wuxi/mid" in evictions[0] and "128.0 KiB" in evictions[0] and "over quota" in evictions[0],
          "the eviction of job 9's unpinned entry is listed with its size and reason: %r" % evictions)
    check(not visible(d, "staging-evictions-none"), "no 'no eviction' note beside it")
    shot(d, "staging-en")
    contrast(d, "the staging view")
    # The same pages in Simplified Chinese.
    Select = __import__("selenium.webdriver.support.ui", fromlist=["Select"]).Select
    Select(by_id(d, "lang")).select_by_value("zh-CN")
    caption = lambda d: d.execute_script("return document.querySelector('#staging-evictions caption').textContent")
    wait(d, lambda d: by_id(d, "nav-staging").text == "预置缓存" and "最近的清除" in caption(d),
         lambda: "the staging view in Chinese: %r, %r" % (by_id(d, "nav-staging").text, caption(d)))
    shot(d, "staging-zh")
    by_id(d, "nav-jobs").click()
    wait(d, lambda d: len(d.find_elements(By.ID, "job-%d" % job)) == 1, "the jobs in Chinese")
    d.find_element(By.XPATH, "//tr[@id='job-%d']//button[text()='#%d']" % (job, job)).click()
    wait(d, lambda d: visible(d, "job-details") and "成功" in by_id(d, "job-attempts").text, "the job's details in Chinese")
    shot(d, "job-details-zh")
    by_id(d, "nav-overview").click()
    wait(d, lambda d: "配额" in by_id(d, "overview-staging").text, "the overview's staging card in Chinese")
    shot(d, "overview-federation-zh")
    Select(by_id(d, "lang")).select_by_value("en")
    wait(d, lambda d: by_id(d, "nav-files").text == "Global Files", "back to English")


def main():
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("the console test took over 150 s")))
    signal.alarm(150)
    with browser() as d:
        try:
            run(d)
        except Exception:
            for e in d.get_log("browser"):
                print("browser console: %s %s" % (e["level"], e["message"]))
            raise
    print("all console checks held")
    return 0


def run(d):
    if cfg.get("mode") == "federation":
        federation(d)
        return
    if True:
        # Markup in names must not run: a payload would set this global or raise an alert.
        sign_in(d, cfg["alice_token"], "alice")

        check(not visible(d, "nav-staging"), "a user who is not an operator has no Staging view")
        # Data Overview: all eleven states by the platform's names, and a chart.
        wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#overview-states tbody tr")) == 11, "the overview lists the eleven states")
        states = d.execute_script("return Array.from(document.querySelectorAll('#overview-states tbody tr td:first-child'), c => c.textContent)")
        check("Up for reschedule" in states and "Upstream failed" in states and "Deferred" in states, "states by the platform's names: %r" % states)
        check(len(d.find_elements(By.CSS_SELECTOR, "#overview-chart svg rect")) == 11, "the chart draws one bar per state")
        check("no prestaging" in by_id(d, "overview-staging").text, "a center without staging says so on the overview")
        shot(d, "overview-en")
        contrast(d, "the overview")

        # Global Files: the datasets, then a 250-entry directory a page at a time.
        by_id(d, "nav-files").click()
        wait(d, lambda d: "public" in by_id(d, "datasets").text and "private" in by_id(d, "datasets").text, "alice sees her two datasets")
        shot(d, "files-en")
        contrast(d, "the datasets")
        d.find_element(By.XPATH, "//table[@id='datasets']//button[text()='public']").click()
        wait(d, lambda d: visible(d, "entries") and len(d.find_elements(By.CSS_SELECTOR, "#entries-body > div")) == 252, "the directory's 252 entries, in one page of up to 1,000")
        # A grid of rows on screen, a table to assistive technology: Chromium's computed roles
        # and names (what a screen reader is given).
        grid = by_id(d, "entries")
        heads = d.find_elements(By.CSS_SELECTOR, "#entries [role=columnheader]")
        first = d.find_elements(By.CSS_SELECTOR, "#entries-body > div")[0]
        check(grid.aria_role == "table" and grid.accessible_name.endswith("public") and [h.aria_role for h in heads] == ["columnheader"] * 4
              and [h.accessible_name for h in heads] == ["Name", "Kind", "Size", "Modified"] and first.aria_role == "row"
              and {c.aria_role for c in first.find_elements(By.XPATH, "./div")} == {"cell"},
              "the entries are a table with four column headers to assistive technology (%s %r %r)" % (grid.aria_role, grid.accessible_name, [h.accessible_name for h in heads]))
        names = [b.text for b in d.find_elements(By.CSS_SELECTOR, "#entries-body a.entry")]
        check("<img src=x onerror=alert(1)>" in names and '"><svg onload=window.__pwned=1>' in names, "names with markup are shown as text")
        check(len(d.find_elements(By.CSS_SELECTOR, "#entries img, #entries svg, #entries script")) == 0, "no element was made from a name")
        check(not visible(d, "entries-more"), "no next page offered for 252 entries")
        # Find, and an entry's details with its replicas ranked.
        box = by_id(d, "find-name")
        box.send_keys("f0012?")
        by_id(d, "find-submit").click()
        wait(d, lambda d: sorted(b.text for b in d.find_elements(By.CSS_SELECTOR, "#entries-body a.entry")) == ["f0012%d" % i for i in range(10)],
             "find f0012? lists exactly the ten matching files")
        # By size too: f00120 to f00129 hold four bytes ("120\n"); none of them three or fewer.
        by_id(d, "find-max").send_keys("3")
        by_id(d, "find-submit").click()
        wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entries-body a.entry")) == 0, "find f0012? of at most 3 bytes: none")
        by_id(d, "find-max").clear()
        by_id(d, "find-min").send_keys("4")
        by_id(d, "find-submit").click()
        wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entries-body a.entry")) == 10, "find f0012? of at least 4 bytes: the ten")
        by_id(d, "find-min").clear()
        by_id(d, "find-min").send_keys("lots")
        by_id(d, "find-submit").click()
        wait(d, lambda d: "Not a size" in by_id(d, "error").text, "a size that is not one is refused in the page")
        by_id(d, "find-min").clear()
        d.find_element(By.XPATH, "//div[@id='entries']//a[text()='f00123']").click()
        wait(d, lambda d: visible(d, "details") and "at this center" in by_id(d, "replicas").text, "the entry's replica is shown with its rank and reason")
        shot(d, "entry-en")

        # Jobs: alice's running jobs, one cancelled from the page.
        by_id(d, "nav-jobs").click()
        row = "job-%d" % cfg["running"]
        wait(d, lambda d: len(d.find_elements(By.ID, row)) == 1, "the running job is listed")
        # Live progress, pushed (the list itself carries none): bytes, files and a rate.
        progress = lambda d: d.find_element(By.CSS_SELECTOR, "#job-%d td.progress" % cfg["victim"]).text
        wait(d, lambda d: "/s" in progress(d) and "files" in progress(d), "a running job shows its live progress")
        shot(d, "jobs-en")
        contrast(d, "the jobs")
        d.find_element(By.XPATH, "//tr[@id='%s']//button[text()='Cancel']" % row).click()
        wait(d, lambda d: d.find_element(By.ID, row).get_attribute("data-state") == "failed" and "cancelled" in d.find_element(By.ID, row).text,
             "after Cancel the row says failed (cancelled), without a reload")
        status, job = api("GET", "/api/v1/transfers/%d" % cfg["running"], cfg["alice_token"])
        check(status == 200 and job["state"] == "failed" and job.get("cancelled") is True, "the daemon has the job cancelled")

        # A POST without the session's CSRF token, from the page itself and from another site.
        check(page_fetch(d, "POST", "/api/v1/transfers/%d/cancel" % cfg["victim"]) == 403, "a POST without the CSRF header is refused (403)")
        evil = evil_server(API + "/api/v1/transfers/%d/cancel" % cfg["victim"])
        try:
            d.get("http://127.0.0.1:%d/" % evil.server_address[1])
            time.sleep(1.5)
        finally:
            evil.shutdown()
        status, job = api("GET", "/api/v1/transfers/%d" % cfg["victim"], cfg["alice_token"])
        check(status == 200 and job["state"] != "failed" and not job.get("cancelled"), "a forged cross-site POST did not cancel the job (%s)" % job["state"])

        # Simplified Chinese, chosen in the page; the choice stays.
        d.get(API + "/#files")
        wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "1", "the console loads again, signed in")
        Select = __import__("selenium.webdriver.support.ui", fromlist=["Select"]).Select
        Select(by_id(d, "lang")).select_by_value("zh-CN")
        wait(d, lambda d: by_id(d, "nav-files").text == "全局文件" and d.execute_script("return document.documentElement.lang") == "zh-CN", "the console speaks Chinese")
        wait(d, lambda d: "public" in by_id(d, "datasets").text, "datasets listed in Chinese too")
        shot(d, "files-zh")
        d.find_element(By.XPATH, "//table[@id='datasets']//button[text()='public']").click()
        wait(d, lambda d: len(d.find_elements(By.XPATH, "//div[@id='entries']//a[text()='f00123']")) == 1, "the directory in Chinese")
        d.find_element(By.XPATH, "//div[@id='entries']//a[text()='f00123']").click()
        wait(d, lambda d: visible(d, "details") and "复制" in by_id(d, "details").text, "an entry's details in Chinese")
        shot(d, "entry-zh")
        by_id(d, "nav-overview").click()
        wait(d, lambda d: "上游失败" in by_id(d, "overview-chart").text, "state names in Chinese")
        shot(d, "overview-zh")
        by_id(d, "nav-jobs").click()
        wait(d, lambda d: len(d.find_elements(By.ID, "job-%d" % cfg["victim"])) == 1, "jobs in Chinese")
        shot(d, "jobs-zh")
        Select(by_id(d, "lang")).select_by_value("en")
        wait(d, lambda d: by_id(d, "nav-files").text == "Global Files", "back to English")

        # The keyboard alone: Tab reaches every control of the header, Enter opens a view.
        d.get(API + "/#overview")
        wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "1", "reloaded")
        reached = []
        body = d.find_element(By.TAG_NAME, "body")
        body.click()
        for _ in range(30):
            press(d, Keys.TAB)
            reached.append(d.switch_to.active_element.get_attribute("id") or d.switch_to.active_element.tag_name)
        check({"nav-overview", "nav-files", "nav-jobs", "lang", "signout"} <= set(reached), "Tab reaches every header control: %r" % reached)
        by_id(d, "nav-jobs").send_keys(Keys.ENTER)
        wait(d, lambda d: visible(d, "view-jobs"), "Enter on 'Jobs' opens the jobs view")
        # ... and every action of the tables: in the jobs, Tab reaches each row's details, the
        # running job's Cancel and the cancelled one's Retry; Enter opens a job's details.
        wait(d, lambda d: len(d.find_elements(By.ID, "job-%d" % cfg["victim"])) == 1, "the jobs are listed")
        by_id(d, "nav-jobs").click()
        labels = set()
        press(d, Keys.TAB)  # from the Jobs button on
        for _ in range(60):
            labels.add(d.switch_to.active_element.get_attribute("aria-label") or "")
            press(d, Keys.TAB)
        want = {"Job #%d" % cfg["victim"], "Cancel #%d" % cfg["victim"], "Job #%d" % cfg["running"], "Retry #%d" % cfg["running"]}
        check(want <= labels, "Tab reaches each job's details, the running job's Cancel, the cancelled job's Retry: missing %r" % (want - labels))
        by_id(d, "nav-jobs").click()
        tab_to(d, lambda i, text, label: label == "Job #%d" % cfg["victim"], "the running job's details button")
        press(d, Keys.ENTER)
        wait(d, lambda d: visible(d, "job-details") and ("#%d" % cfg["victim"]) in by_id(d, "job-title").text, "Enter on a job's details button opens its details")
        # In Global Files: a dataset, an entry, then Replicate and Copy, by Tab and Enter.
        by_id(d, "nav-files").click()
        wait(d, lambda d: visible(d, "entries"), "Global Files shows the directory last open")
        tab_to(d, lambda i, text, label: text == "Datasets", "the path's first step, 'Datasets'")
        press(d, Keys.ENTER)
        wait(d, lambda d: visible(d, "datasets") and "public" in by_id(d, "datasets").text, "Enter on it lists the datasets again")
        tab_to(d, lambda i, text, label: text == "public", "the dataset 'public'")
        press(d, Keys.ENTER)
        wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entries-body > div")) == 252, "Enter opens the dataset")
        tab_to(d, lambda i, text, label: text == "f00003", "the entry f00003", presses=40)
        press(d, Keys.ENTER)
        wait(d, lambda d: visible(d, "details") and "f00003" in by_id(d, "details-title").text, "Enter opens the entry's details")
        walk = tab_to(d, lambda i, text, label: i == "copy-submit", "the details' Copy button", presses=400)
        check({"replicate", "copy-to"} <= {i for i, _, _ in walk}, "on the way Tab reached Replicate and the copy's destination")

        # The overview's throughput of the last hour is what the runner measured while alice's
        # jobs to wuxi ran (the victim still runs): her line for wuxi is there.
        by_id(d, "nav-overview").click()
        wait(d, lambda d: "wuxi" in by_id(d, "overview-hour").text and len(d.find_elements(By.CSS_SELECTOR, "#overview-hour tbody tr svg polyline")) == 1,
             "the last hour's throughput to wuxi, measured while the jobs run", 30)

        # Sign out: the session is gone at the daemon, not only in the page.
        by_id(d, "signout").click()
        wait(d, lambda d: visible(d, "view-signin"), "signed out, the sign-in form is back")
        check(page_fetch(d, "GET", "/api/v1/transfers") == 401, "after sign-out the API refuses the old session (401)")

        # Bob sees none of alice's private data or jobs, in lists or by direct address.
        sign_in(d, cfg["bob_token"], "bob")
        by_id(d, "nav-files").click()
        wait(d, lambda d: "public" in by_id(d, "datasets").text, "bob sees the public dataset")
        check("private" not in by_id(d, "datasets").text, "bob does not see alice's private dataset")
        check(page_fetch(d, "GET", "/api/v1/catalog/ls?path=gfs%3A%2F%2Fhlrs%2Fprivate") in (403, 404), "nor list it by its address")
        by_id(d, "nav-jobs").click()
        time.sleep(0.5)
        check(len(d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")) == 0, "bob's job list is empty")
        check(page_fetch(d, "GET", "/api/v1/transfers/%d" % cfg["victim"]) == 404, "alice's job by its address: 404 for bob")
        # Nor through search: find in the public dataset works for him, in the private one not.
        by_id(d, "nav-files").click()
        wait(d, lambda d: "public" in by_id(d, "datasets").text, "bob's datasets")
        d.find_element(By.XPATH, "//table[@id='datasets']//button[text()='public']").click()
        wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entries-body > div")) == 252, "bob opens the public dataset")
        by_id(d, "find-name").send_keys("*")
        by_id(d, "find-submit").click()
        wait(d, lambda d: "252 found" in by_id(d, "status").text, "bob's find in public lists its 252 entries")
        check(not any("secret" in b.text for b in d.find_elements(By.CSS_SELECTOR, "#entries-body a.entry")), "no entry of alice's private dataset among them")
        check(page_fetch(d, "GET", "/api/v1/catalog/find?path=gfs%3A%2F%2Fhlrs%2Fprivate&name=secret*") in (403, 404), "bob's find in alice's private dataset is refused")
        check(page_fetch(d, "GET", "/api/v1/catalog/find?path=gfs%3A%2F%2Fhlrs&name=secret*") in (400, 403, 404), "and a find over the whole center is no way around it")
        # His overview: nothing of alice's jobs in the last hour's throughput.
        by_id(d, "nav-overview").click()
        wait(d, lambda d: "Nothing moved" in by_id(d, "overview-hour").text, "bob's overview shows no throughput of alice's jobs")

        # Nothing a name carried ran, and the page raised no script error.
        check(d.execute_script("return window.__pwned === undefined"), "no payload ran (window.__pwned unset)")
        logs = d.get_log("browser")
        bad = [e["message"] for e in logs if "Uncaught" in e["message"] or "alert" in e["message"] or "Content Security Policy" in e["message"]]
        check(not bad, "no script error or policy violation in the console: %r" % bad)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError:
        sys.exit(1)
