"""A real headless Chromium driven by Selenium, for the web console's test (console_test.py).

Debian's chromium and chromium-driver and PyPI's selenium (scripts/install-deps.sh --tests).
As root in a container: --no-sandbox, /dev/shm not used, a temporary profile and HOME (Chromium
writes its crash database and GTK its cache under HOME whatever --user-data-dir says), no host
but 127.0.0.1 and localhost resolves (nothing leaves the machine). `Browser` quits the driver,
reaps the browser's orphans (this process is their subreaper) and fails if any outlives it.
"""

import contextlib
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_SECONDS = 10


def make_options(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [
        "--headless=new",
        "--no-sandbox",  # root in a container: no usable sandbox
        "--disable-dev-shm-usage",  # shared memory in /tmp, not a possibly small /dev/shm
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-breakpad",
        "--no-proxy-server",
        # No host resolves but 127.0.0.1 and localhost: nothing leaves the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
        "--window-size=1280,800",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.page_load_strategy = "normal"
    return options


def reap_children():
    """Waits for every child that has ended (the browser's orphans come to us, the subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def leftover_processes(marker):
    """Pids of live processes that are our children or whose command line contains marker."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if state != "Z" and (marker.encode() in cmdline or ppid == os.getpid()):
            pids.append(int(entry))
    return pids


@contextlib.contextmanager
def browser():
    """A driver for one test run; everything it started is gone when the block ends."""
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    profile = tempfile.mkdtemp(prefix="ferry-chromium-")
    driver_log = os.path.join(profile, "chromedriver.log")
    service = Service(executable_path=CHROMEDRIVER, log_output=driver_log, env=dict(os.environ, HOME=profile))
    driver = None
    ok = False
    try:
        driver = webdriver.Chrome(service=service, options=make_options(profile))
        driver.set_page_load_timeout(WAIT_SECONDS)
        driver.set_script_timeout(WAIT_SECONDS)
        yield driver
        ok = True
    finally:
        if driver is not None:
            driver.quit()
        else:
            service.stop()
        deadline = time.monotonic() + 5
        while True:
            reap_children()
            left = leftover_processes(profile)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        reap_children()
        if left:
            print(f"FAIL: browser processes left after quit (killed): {left}", file=sys.stderr)
        if not ok and os.path.exists(driver_log):
            with open(driver_log, errors="replace") as f:
                print("chromedriver log (tail):\n" + "".join(f.readlines()[-40:]), file=sys.stderr)
        shutil.rmtree(profile, ignore_errors=True)
        if left and ok:
            raise RuntimeError("browser processes outlived the driver")
