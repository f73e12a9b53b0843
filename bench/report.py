#!/usr/bin/env python3
"""Turn bench/run's raw results into RESULTS.md and PNG charts.

Reads OUT/machine.tsv, OUT/data-smiles.tsv, OUT/results/SCENARIO.{tsv,when,runs},
OUT/commands/SCENARIO.tsv and OUT/ferry-status (all written by bench/run). A scenario that
was not run this time keeps the figures of its last run (its date is shown).

Usage: report.py --out DIR --report FILE --charts DIR [--repo DIR]
"""
import argparse
import csv
import os
import statistics
import sys

GiB = 1 << 30
MiB = 1 << 20
SCENARIOS = ["bigfile", "sink", "disk", "smallfiles", "smiles", "mixed", "rss"]
TITLES = {
    "bigfile": "One random file",
    "sink": "Sink: the random file pulled into a character device (no destination filesystem)",
    "disk": "Disk to disk: the random file from ext4 to ext4, source not cached, timed until synced",
    "smallfiles": "Many small files (nested tree)",
    "smiles": "SMILES text (compressible)",
    "mixed": "Mixed tree (a few large files, many small ones)",
    "rss": "Peak memory, one large random file",
}
TREES = ("smallfiles", "mixed")          # scenarios that copy a tree: files/s shown
# Display order of the tools within a table.
ORDER = ["ferry", "ferry-user", "ferry-stdout", "ferry-auto", "ferry-off", "ferry-buffered", "ferry-clear", "ferry-safe", "ferry-handshake", "cp", "rsync", "scp", "gridftp", "xrootd", "xrootd-nopg", "rclone",
         "iperf3-P1", "iperf3-P4"]
DESCR = {
    "ferry": "Ferry, defaults (`--protection private`: AES-256-GCM, `--compress auto`)",
    "ferry-user": "Ferry, defaults, the server acting as the unprivileged account `ferrybench` (`--run-as ferrybench`)",
    "ferry-clear": "Ferry, `--protection clear` (XXH3 checksums only, like the other tools)",
    "ferry-safe": "Ferry, `--protection safe` (AES-256-GCM authentication, no encryption)",
    "ferry-handshake": "Ferry, TLS 1.3 handshake (`ferry ping --count 50`, median; seconds column)",
    "ferry-auto": "Ferry, `--compress auto`",
    "ferry-buffered": "Ferry, defaults, the server with `--direct-io off` (page cache)",
    "ferry-off": "Ferry, `--compress off`",
    "cp": "local `cp` (storage ceiling)",
    "rsync": "rsync daemon, `--whole-file`",
    "scp": "scp (OpenSSH, SFTP protocol)",
    "gridftp": "GridFTP: `globus-url-copy -p 4 -cc 4 -pp -fast` to globus-gridftp-server",
    "xrootd": "XRootD: `xrdcp -S 4` (trees `-r --parallel 8`) to xrootd",
    "xrootd-nopg": "XRootD as above, page checksums off (`XRD_CPUSEPGWRTRD=0`)",
    "rclone": "rclone: `copy --transfers 16 --multi-thread-streams 4`, pulling from `rclone serve http`",
    "iperf3-P1": "iperf3, 1 stream (network ceiling)",
    "iperf3-P4": "iperf3, 4 streams (network ceiling)",
}
# The sink scenario's rows: every client is the receiver, pulling into the device node.
DESCR_SINK = {
    "ferry": "Ferry, defaults: `ferry cp ferry://…/big.bin NODE` (written in place, one stream)",
    "ferry-stdout": "Ferry, defaults, to standard output: `ferry cp ferry://…/big.bin - >NODE`",
    "cp": "local `cp big.bin NODE` (read ceiling, no network)",
    "rsync": "rsync",
    "gridftp": "GridFTP: `globus-url-copy -p 4 -cc 4 -pp -fast ftp://…/big.bin file://NODE`",
    "xrootd": "XRootD: `xrdcp -S 4 root://…//big.bin - >NODE`",
    "xrootd-nopg": "XRootD as above, page checksums off (`XRD_CPUSEPGWRTRD=0`)",
    "rclone": "rclone: `rclone cat :http:big.bin >NODE` from `rclone serve http` (one stream)",
}


def descr(s, name):
    if s == "sink" and name in DESCR_SINK:
        return DESCR_SINK[name]
    return DESCR.get(name, name)


# Other tools that copy over the network (the comparisons the issues ask for).
NETWORK_TOOLS = ["rsync", "scp", "gridftp", "xrootd", "xrootd-nopg", "rclone"]


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_kv(path):
    d = {}
    if os.path.exists(path):
        for line in open(path):
            k, _, v = line.rstrip("\n").partition("\t")
            d[k] = v
    return d


def read_text(path, default=""):
    return open(path).read().strip() if os.path.exists(path) else default


class Tool:
    """Median figures of one tool in one scenario."""

    def __init__(self, name, rows):
        self.name = name
        self.rows = rows
        ok = [r for r in rows if r["status"] == "ok"]
        self.ok = ok
        self.n_ok, self.n = len(ok), len(rows)
        self.skipped = all(r["status"] == "SKIP" for r in rows)
        self.failures = [r for r in rows if r["status"] == "FAIL"]
        if name.startswith("iperf3"):
            self.seconds = None
            self.gbps = med(num(r["gbps_net"]) for r in ok)
            self.bytes = self.files = None
        else:
            self.seconds = med(num(r["seconds"]) for r in ok)
            self.bytes = num(rows[0]["bytes"]) if rows else None
            self.files = num(rows[0]["files"]) if rows else None
            self.gbps = self.bytes * 8 / self.seconds / 1e9 if self.seconds else None
        self.files_per_s = self.files / self.seconds if self.seconds and self.files else None
        gib = (self.bytes or 0) / GiB

        def per_gib(vals):
            m = med(vals)
            return m / gib if m is not None and gib else None

        self.client_cpu = per_gib((num(r["client_user"]) or 0) + (num(r["client_sys"]) or 0)
                                  if num(r["client_user"]) is not None else None for r in ok)
        self.server_cpu = per_gib(num(r["server_cpu"]) for r in ok)
        nf = self.files or 0

        def per_file_us(vals):
            m = med(vals)
            return m / nf * 1e6 if m is not None and nf else None

        self.client_us_file = per_file_us((num(r["client_user"]) or 0) + (num(r["client_sys"]) or 0)
                                          if num(r["client_user"]) is not None else None for r in ok)
        self.server_us_file = per_file_us(num(r["server_cpu"]) for r in ok)
        crss = [num(r["client_rss_kb"]) for r in ok]
        srss = [num(r["server_rss_kb"]) for r in ok]
        self.client_rss = max([x for x in crss if x is not None], default=None)
        self.server_rss = max([x for x in srss if x is not None], default=None)
        wire = med(num(r["wire_bytes"]) for r in ok)
        self.wire_ratio = self.bytes / wire if wire and self.bytes else None
        self.all_seconds = [("%.2f" % num(r["seconds"]) if r["status"] == "ok" else r["status"])
                            + ("*" if "concurrent:" in r.get("note", "") else "") for r in rows]
        self.n_concurrent = sum("concurrent:" in r.get("note", "") for r in rows)


def load(out):
    scen = {}
    for s in SCENARIOS:
        rows = read_tsv(os.path.join(out, "results", s + ".tsv"))
        if not rows:
            continue
        names = sorted({r["tool"] for r in rows}, key=lambda t: ORDER.index(t) if t in ORDER else 99)
        scen[s] = {
            "tools": {t: Tool(t, [r for r in rows if r["tool"] == t]) for t in names},
            "when": read_text(os.path.join(out, "results", s + ".when"), "?"),
            "runs": read_text(os.path.join(out, "results", s + ".runs"), "?"),
            "commands": read_tsv(os.path.join(out, "commands", s + ".tsv")),
        }
    return scen


def f(x, fmt="%.2f", none="–"):
    return none if x is None else fmt % x


def ratio(a, b):
    return a / b if a is not None and b else None


def targets(scen):
    """(target, source, measured, met) rows; met is True/False/None (not measured)."""
    rows = []

    def tool(s, t):
        return scen.get(s, {}).get("tools", {}).get(t)

    def rate(s, t, attr="gbps"):
        x = tool(s, t)
        return getattr(x, attr) if x else None

    fe, cp, rs = rate("bigfile", "ferry"), rate("bigfile", "cp"), rate("bigfile", "rsync")
    r = ratio(fe, cp)
    rows.append(("4 GiB file: Ferry ≥ 75 % of `cp`", "issue 2", f(r and 100 * r, "%.0f %% of cp"), r and r >= 0.75))
    rows.append(("4 GiB file: Ferry ≥ 85 % of `cp`", "issue 5", f(r and 100 * r, "%.0f %% of cp"), r and r >= 0.85))
    r = ratio(fe, rs)
    rows.append(("4 GiB file: Ferry ≥ 2× rsync", "issue 2", f(r, "%.2f×"), r and r >= 2))
    fe, rs = rate("smallfiles", "ferry", "files_per_s"), rate("smallfiles", "rsync", "files_per_s")
    r = ratio(fe, rs)
    rows.append(("20,000 × 4 KiB: Ferry ≥ 2× rsync files/s", "issue 2", f(r, "%.2f×"), r and r >= 2))
    others = [(t, rate("smallfiles", t, "files_per_s")) for t in NETWORK_TOOLS]
    others = [(t, x) for t, x in others if x]
    best = max(others, key=lambda o: o[1], default=(None, None))
    r = ratio(fe, best[1])
    rows.append(("20,000 × 4 KiB: Ferry ≥ 3× the best other tool measured here (%s)"
                 % ", ".join(t for t, _ in others) if others else
                 "20,000 × 4 KiB: Ferry ≥ 3× the best other tool measured here",
                 "issue 5", f(r, "%.2f×") + (" (best: %s)" % best[0] if best[0] else ""), r and r >= 3))
    p_, c_ = rate("bigfile", "ferry"), rate("bigfile", "ferry-clear")
    r = ratio(p_, c_)
    rows.append(("4 GiB file: `--protection private` ≥ 80 % of `clear`", "issue 3", f(r and 100 * r, "%.0f %% of clear"), r and r >= 0.8))
    s_ = rate("bigfile", "ferry-safe")
    r = ratio(s_, c_)
    rows.append(("4 GiB file: `--protection safe` vs `clear` (no target)", "issue 3", f(r and 100 * r, "%.0f %% of clear"), "info"))
    for s_, what, attr in (("bigfile", "4 GiB file", "gbps"), ("smallfiles", "20,000 × 4 KiB", "files_per_s")):
        u, r0 = rate(s_, "ferry-user", attr), rate(s_, "ferry", attr)
        r = ratio(u, r0)
        rows.append(("%s: server acting as an unprivileged account within 3 %% of root" % what, "issue 13",
                     f(r and 100 * (r - 1), "%+.1f %% (account vs root, medians)"), r and r >= 0.97))
    h = tool("bigfile", "ferry-handshake")
    hs = h.seconds if h else None
    rows.append(("TLS 1.3 handshake on loopback ≤ 5 ms", "issue 3", f(hs and hs * 1000, "%.2f ms"), (hs <= 0.005) if hs is not None else None))
    a, o = rate("bigfile", "ferry-auto"), rate("bigfile", "ferry-off")
    r = ratio(a, o)
    rows.append(("random data: `--compress auto` within 5 % of `off`", "issue 2",
                 f(r and 100 * (r - 1), "%+.1f %% (auto vs off)"), r and r >= 0.95))
    a, o = rate("smiles", "ferry-auto"), rate("smiles", "ferry-off")
    r = ratio(a, o)
    rows.append(("SMILES text: `--compress auto` never slower than `off`", "issue 2",
                 f(r and 100 * (r - 1), "%+.1f %% (auto vs off, medians)"), r and r >= 1.0))
    m = shaped_medians(shaped_rows(OUT_DIR[0])) if OUT_DIR else {}
    a1 = m.get(("1gbit", "auto"))
    rows.append(("shaped 1 Gbit/s, SMILES: goodput with `--compress auto` ≥ 2× the link", "issue 5",
                 f(a1, "%.2f Gbit/s") + (" (%.2f× the link)" % a1 if a1 else ""), (a1 >= 2.0) if a1 is not None else None))
    a5, o5 = m.get(("5gbit", "auto")), m.get(("5gbit", "off"))
    r = ratio(a5, o5)
    rows.append(("shaped 5 Gbit/s, SMILES: `--compress auto` never slower than `off`", "issue 5",
                 f(r and 100 * (r - 1), "%+.1f %% (auto vs off, medians)"), r and r >= 1.0))
    t = tool("rss", "ferry")
    if t and t.n_ok:
        m = max(t.client_rss or 0, t.server_rss or 0) / 1024
        meas = "client %s MiB, server %s MiB (%s GiB file)" % (
            f(t.client_rss and t.client_rss / 1024, "%.0f"), f(t.server_rss and t.server_rss / 1024, "%.0f"),
            f(t.bytes / GiB, "%.0f"))
        met = (t.client_rss is not None and t.server_rss is not None and m <= 256)
    else:
        meas, met = "–", None
    rows.append(("16 GiB file: peak RSS of each side ≤ 256 MiB", "issue 2", meas, met))
    return rows


def shaped_rows(out):
    """Rows (rate, mode, run, seconds, goodput_gbps, wire_bytes) of bench/shaped.sh, if run."""
    path = os.path.join(out, "results", "shaped-link.tsv")
    if not os.path.exists(path):
        return []
    return [l.rstrip("\n").split("\t") for l in open(path) if l.strip() and not l.startswith("rate\t")]


def shaped_medians(rows):
    by = {}
    for r in rows:
        by.setdefault((r[0], r[1]), []).append(float(r[4]))
    return {k: statistics.median(v) for k, v in by.items()}


def mark(met):
    if met == "info":
        return "–"
    return {True: "**met**", False: "**not met**"}.get(bool(met) if met is not None else None, "not measured")


def ceiling(scen, s):
    """(Gbit/s, where from) of the loopback's ceiling for scenario s: the faster of the iperf3
    medians measured in that scenario, else in bigfile."""
    for src in (s, "bigfile"):
        tools = scen.get(src, {}).get("tools", {})
        vals = [t.gbps for n, t in tools.items() if n.startswith("iperf3") and t.gbps]
        if vals:
            return max(vals), src
    return None, None


def scenario_table(s, d, machine, data, scen):
    tools = d["tools"]
    out = []
    out.append("### %s\n" % TITLES[s])
    extra = ""
    if s == "smiles" and data:
        extra = (" Data: %s bytes, %s lines; `zstd -1 -T1` compresses it %s× at %s MB/s (one core)."
                 % (data.get("smiles_bytes", "?"), data.get("smiles_lines", "?"),
                    data.get("smiles_zstd1_ratio", "?"), data.get("smiles_zstd1_MBps", "?")))
    if s in TREES:
        t0 = next((t for t in tools.values() if t.bytes), None)
        if t0:
            extra += " Data: %d files, %s bytes." % (t0.files or 0, "{:,}".format(int(t0.bytes)))
    out.append("Measured %s; %s run(s) per tool, alternating; medians.%s\n" % (d["when"], d["runs"], extra))
    files_col = s in TREES
    ceil, ceil_src = ceiling(scen, s) if s != "rss" else (None, None)
    hdr = ["tool", "ok/runs", "median s", "Gbit/s"]
    if files_col:
        hdr.append("files/s")
    if ceil:
        hdr.append("÷ iperf3")
    hdr += ["client CPU s/GiB", "server CPU s/GiB"]
    if s == "smallfiles":
        hdr += ["client CPU µs/file", "server CPU µs/file"]
    hdr += ["client peak RSS MiB", "server peak RSS MiB"]
    if s in ("bigfile", "smiles"):
        hdr.append("bytes/wire bytes")
    hdr.append("all runs (s)")
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "---|" * len(hdr))
    for name, t in tools.items():
        if name == "ferry-handshake":
            ms = ", ".join("%.2f ms" % (num(r["seconds"]) * 1000) for r in t.rows if num(r["seconds"]) is not None)
            out.append("| %s | %d/%d | %s ms median | %s |" % (DESCR[name], t.n_ok, t.n, f(t.seconds and t.seconds * 1000, "%.2f"), ms)
                       + " |" * (len(hdr) - 4))
            continue
        if t.skipped:
            out.append("| %s | skipped (%s) |" % (descr(s, name), t.rows[0]["note"]) + " |" * (len(hdr) - 2))
            continue
        row = [descr(s, name), "%d/%d" % (t.n_ok, t.n), f(t.seconds, "%.2f"), f(t.gbps, "%.2f")]
        if files_col:
            row.append(f(t.files_per_s, "%.0f"))
        if ceil:
            row.append(f(ratio(t.gbps, ceil), "%.2f"))
        row += [f(t.client_cpu), f(t.server_cpu)]
        if s == "smallfiles":
            row += [f(t.client_us_file, "%.0f"), f(t.server_us_file, "%.0f")]
        row += [f(t.client_rss and t.client_rss / 1024, "%.0f"), f(t.server_rss and t.server_rss / 1024, "%.0f")]
        if s in ("bigfile", "smiles"):
            row.append(f(t.wire_ratio, "%.2f"))
        if name.startswith("iperf3"):
            row.append(", ".join(f(num(r["gbps_net"]), "%.2f Gbit/s") + ("*" if "concurrent:" in r["note"] else "")
                                 for r in t.rows))
        else:
            row.append(", ".join(t.all_seconds))
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if ceil:
        out.append("÷ iperf3: the tool's Gbit/s divided by %.2f Gbit/s, the faster of the iperf3 medians "
                   "(1 or 4 streams, memory to memory)%s.\n"
                   % (ceil, "" if ceil_src == s else " measured in the %s scenario" % ceil_src))
    if s == "sink":
        out.append("Every client here is the receiver: it pulls from its server (which reads the file from tmpfs) "
                   "and writes into NODE, a character device with `/dev/null`'s numbers (1,3) that `bench/run` "
                   "makes with `mknod` in its own directory; after every run NODE must still be that device, and "
                   "Ferry's summary (and GridFTP's transfer log) must count the file's bytes, else the run fails. "
                   "Client CPU is the receiving side, server CPU the sending side.\n")
    elif "rclone" in tools and not tools["rclone"].skipped:
        out.append("rclone pulls (its client is the receiver and `rclone serve http` the sender); "
                   "every other tool pushes from the client to the server.\n")
    conc = sum(t.n_concurrent for t in tools.values())
    if conc:
        seen = sorted({r["note"].split("concurrent:")[1].strip() for t in tools.values() for r in t.rows
                       if "concurrent:" in r["note"]})
        out.append("\\* %d run(s) here overlapped other sessions' builds or tests on the shared 2 cores (%s); "
                   "they are in the medians but their figures are pessimistic.\n" % (conc, "; ".join(seen)))
    # Ratios of Ferry (defaults) to the others.
    fe = tools.get("ferry")
    if fe and fe.n_ok and s != "rss":
        key = "files_per_s" if files_col else "gbps"
        parts = []
        for other in ["cp"] + NETWORK_TOOLS + ["iperf3-P1", "iperf3-P4", "ferry-off", "ferry-auto"]:
            o = tools.get(other)
            if o is None or not o.n_ok:
                continue
            # iperf3 has no files/s; compare throughput with it.
            a = getattr(fe, "gbps" if other.startswith("iperf3") else key)
            b = getattr(o, "gbps" if other.startswith("iperf3") else key)
            r = ratio(a, b)
            if r is not None:
                parts.append("Ferry/%s **%.2f**" % (other, r))
        peers = [(n, getattr(tools[n], key)) for n in NETWORK_TOOLS if n in tools and tools[n].n_ok
                 and getattr(tools[n], key)]
        if peers:
            bn, bv = max(peers, key=lambda p: p[1])
            parts.append("Ferry/fastest other network tool (%s) **%.2f**" % (bn, ratio(getattr(fe, key), bv)))
        if parts:
            out.append("Ratios (%s, medians%s): %s.\n" % ("files/s" if files_col else "Gbit/s",
                                                        "; Gbit/s for iperf3" if files_col and any("iperf3" in p for p in parts) else "",
                                                        "; ".join(parts)))
    if fe and fe.n_ok and "ferry-user" in tools and tools["ferry-user"].n_ok:
        u = tools["ferry-user"]
        key = "files_per_s" if files_col else "gbps"
        r = ratio(getattr(u, key), getattr(fe, key))
        if r:
            out.append("Identity switching (issue 13): the server acting as `ferrybench` (per-thread setfsuid/setfsgid/"
                       "setgroups) reaches %.3f× the %s of the same server acting as root (%+.1f %%; aim: within 3 %%); "
                       "server CPU %s against %s s/GiB. Every file it wrote was checked to be owned by `ferrybench`.\n"
                       % (r, "files/s" if files_col else "Gbit/s", 100 * (r - 1), f(u.server_cpu), f(fe.server_cpu)))
    if "ferry-auto" in tools and "ferry-off" in tools:
        a, o = tools["ferry-auto"], tools["ferry-off"]
        r = ratio(a.gbps, o.gbps)
        if r:
            out.append("`--compress auto` vs `off`: %+.1f %% throughput (auto %s, off %s Gbit/s; auto sent %s× fewer bytes than the file).\n"
                       % (100 * (r - 1), f(a.gbps), f(o.gbps), f(a.wire_ratio, "%.2f")))
    fails = [(n, r) for n, t in tools.items() for r in t.failures]
    if fails:
        out.append("Failed runs:\n")
        for n, r in fails:
            out.append("- %s run %s: %s" % (n, r["run"], r["note"].strip() or "(no message)"))
        out.append("")
    return out


def color(n):
    if n.startswith("ferry"):
        return "#d9534f"
    if n.startswith("iperf3"):
        return "#999999"
    if n == "cp":
        return "#c5d7ee"
    return "#5b8cc9"


def charts(scen, chart_dir):
    """throughput.png and cpu.png; returns the file names written (empty without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    def grid(n):
        cols = 2 if n > 1 else 1
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 0.5 + 4.4 * rows), squeeze=False)
        flat = [ax for row in axes for ax in row]
        for ax in flat[n:]:
            ax.axis("off")
        return fig, flat

    panels = [(s, "files_per_s" if s == "smallfiles" else "gbps") for s in ("bigfile", "sink", "smallfiles", "smiles", "mixed")
              if s in scen]
    if panels:
        fig, axes = grid(len(panels))
        for ax, (s, key) in zip(axes, panels):
            names, vals = [], []
            for n, t in scen[s]["tools"].items():
                v = getattr(t, key)
                if v is None or not t.bytes:
                    continue
                names.append(n)
                vals.append(v)
            ax.barh(names[::-1], vals[::-1], color=[color(n) for n in names[::-1]])
            for i, v in enumerate(vals[::-1]):
                ax.text(v, i, " %.0f" % v if key == "files_per_s" else " %.2f" % v, va="center", fontsize=8)
            ax.set_title("%s\n(%s)" % (TITLES[s], "files/s" if key == "files_per_s" else "Gbit/s"), fontsize=10)
            ax.set_xlim(0, max(vals or [1]) * 1.2)
            ax.tick_params(axis="y", labelsize=8)
        fig.suptitle("Loopback, tmpfs to tmpfs, medians (higher is better)", fontsize=11)
        fig.tight_layout()
        fig.savefig(os.path.join(chart_dir, "throughput.png"), dpi=110)
        plt.close(fig)
        written.append("throughput.png")
    panels = [s for s in ("bigfile", "sink", "smallfiles", "smiles", "mixed") if s in scen]
    if panels:
        fig, axes = grid(len(panels))
        for ax, s in zip(axes, panels):
            names, cl, sv = [], [], []
            for n, t in scen[s]["tools"].items():
                c, v = t.client_cpu, t.server_cpu
                if n.startswith("iperf3") or (c is None and v is None):
                    continue
                names.append(n)
                cl.append(c or 0)
                sv.append(v or 0)
            y = list(range(len(names)))[::-1]
            ax.barh(y, cl, color="#5b8cc9", label="client")
            ax.barh(y, sv, left=cl, color="#f0ad4e", label="server")
            for i, (c, v) in enumerate(zip(cl, sv)):
                ax.text(c + v, y[i], " %.2f" % (c + v), va="center", fontsize=8)
            ax.set_yticks(y)
            ax.set_yticklabels(names, fontsize=8)
            ax.set_xlim(0, max([c + v for c, v in zip(cl, sv)] or [1]) * 1.2)
            ax.set_title("%s\nCPU seconds per GiB (client + server)" % TITLES[s], fontsize=10)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="upper right")
        fig.suptitle("CPU cost (lower is better; rclone's client is the receiver, every other client the sender)",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(os.path.join(chart_dir, "cpu.png"), dpi=110)
        plt.close(fig)
        written.append("cpu.png")
    return written


# Top-level sections that this script writes; any other "## " section found in an existing
# report (added by hand or by another script, e.g. bench/shaped.sh results) is kept, in place
# after the generated section that preceded it.
GENERATED = ("Targets", "Results", "Charts", "Profiles (what limits Ferry)", "Machine and versions",
             "Data sets", "Exact commands", "Not covered here")


def kept_sections(path):
    """[(previous generated heading, text)] for the hand-written sections of an existing report."""
    if not os.path.exists(path):
        return []
    kept, prev, cur = [], None, None
    for line in open(path, errors="replace"):
        if line.startswith("## "):
            title = line[3:].strip()
            if title in GENERATED:
                cur = None
                prev = title
            else:
                cur = [prev, line]
                kept.append(cur)
            continue
        if cur is not None:
            cur.append(line)
    return [(k[0], "".join(k[1:]).rstrip("\n") + "\n") for k in kept]


OUT_DIR = []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--charts", required=True)
    ap.add_argument("--repo", default=".")
    a = ap.parse_args()

    OUT_DIR.append(a.out)
    machine = read_kv(os.path.join(a.out, "machine.tsv"))
    data = read_kv(os.path.join(a.out, "data-smiles.tsv"))
    scen = load(a.out)
    os.makedirs(a.charts, exist_ok=True)
    pngs = charts(scen, a.charts)
    rel = os.path.relpath(a.charts, os.path.dirname(os.path.abspath(a.report)))

    L = []
    L.append("# Ferry benchmark results\n")
    L.append("Written by `bench/run` (%s mode; command `%s`, started %s). Regenerate with the same command; "
             "`bench/run --only SCENARIO` refreshes one scenario and keeps the others' last figures.\n"
             % (machine.get("mode", "?"), machine.get("command", "bench/run").strip(), machine.get("date", "?")))
    if machine.get("mode") == "quick":
        L.append("> **Quick (smoke) mode**: small data sets and one run each; the targets are stated for the "
                 "full sizes, so these figures only show that everything runs.\n")
    status = read_text(os.path.join(a.out, "ferry-status"))
    if status:
        L.append("> **Ferry was not measured:** %s\n" % status)

    L.append("## Targets\n")
    L.append("| target | from | measured (medians) | |")
    L.append("|---|---|---|---|")
    for tgt, src, meas, met in targets(scen):
        L.append("| %s | %s | %s | %s |" % (tgt, src, meas, mark(met)))
    L.append("")

    L.append("## Results\n")
    L.append("Loopback (127.0.0.1) only, tmpfs (`/dev/shm`) to tmpfs, except the RSS run (disk to disk, see "
             "below). Gbit/s = bytes of the data set × 8 / wall seconds of the client command. "
             "Every copy was compared with its source after the run (`cmp`, `diff -r`; not timed); a run "
             "that differed counts as failed and is left out of the medians. Client CPU = user + system "
             "seconds of the client command and its children (`/usr/bin/time`); server CPU = the "
             "daemon's utime + stime + cutime + cstime growth over the run (`/proc/PID/stat`, which "
             "includes its reaped per-connection children). CPU per GiB = those seconds / GiB of the data set. "
             "Every server is started afresh for each run. Peak RSS: `/usr/bin/time` %M for the client; for "
             "the server, VmHWM of `ferry serve`, and for the others `/usr/bin/time` %M of the daemon "
             "started under it, which covers the per-connection processes it forked and reaped "
             "(rsync, sshd, globus-gridftp-server).\n")
    for s in SCENARIOS:
        if s in scen:
            L.extend(scenario_table(s, scen[s], machine, data, scen))
    srows = shaped_rows(a.out)
    if srows:
        when = read_text(os.path.join(a.out, "results", "shaped.when"), "?")
        L.append("### Shaped link between two network namespaces (`bench/shaped.sh`, run %s)\n" % when)
        L.append("Two namespaces made by the script, a veth pair, `tbf` on the sender's side (burst 4 MiB, "
                 "latency 50 ms), IPv6 unique-local addresses that exist only inside those namespaces; "
                 "SMILES text of the smiles scenario (`bench/gen_smiles.py`), `ferry cp` with Ferry's "
                 "defaults (`--protection private`) and `--compress off` or `auto`, alternating; each copy "
                 "compared with `cmp`. Goodput = file bytes × 8 / seconds.\n")
        L.append("| link | mode | runs | median goodput Gbit/s | × link | median wire bytes / file bytes |")
        L.append("|---|---|---|---|---|---|")
        med = shaped_medians(srows)
        for (rate, mode), g in med.items():
            runs = [r for r in srows if r[0] == rate and r[1] == mode]
            size = None
            try:
                link = float(rate.replace("gbit", ""))
            except ValueError:
                link = None
            wires = sorted(float(r[5]) for r in runs)
            secs = [float(r[3]) for r in runs]
            size = statistics.median(float(r[4]) * float(r[3]) / 8 * 1e9 for r in runs)
            L.append("| %s | %s | %d | %.2f | %s | %s |" % (rate, mode, len(runs), g, f(link and g / link, "%.2f"),
                                                       f(size and statistics.median(wires) / size, "%.2f")))
        L.append("")
    if "rss" in scen:
        L.append("The RSS run uses a file of random bytes (AES-CTR keystream) on the disk under `%s`, "
                 "and the server's root on the same disk: two copies of a 16 GiB file do not fit in "
                 "24 GiB of RAM next to the tmpfs data sets. Peak RSS excludes the page cache, so "
                 "the disk changes the speed, not the memory figure. One run.\n"
                 % machine.get("disk_dir", "?").split(" ")[0])

    if pngs:
        L.append("## Charts\n")
        for p in pngs:
            L.append("![%s](%s/%s)\n" % (p[:-4], rel, p))

    profiles = [(s, os.path.join(a.out, "results", s + ".profile.txt")) for s in SCENARIOS]
    profiles = [(s, p) for s, p in profiles if os.path.exists(p)]
    if profiles:
        L.append("## Profiles (what limits Ferry)\n")
        L.append("One extra Ferry run per scenario (defaults, not counted above), each side under its own "
                 "`perf record -g` (`-p SERVER`, and the client command itself), so that other sessions' "
                 "processes are left out; threads, io_uring workers (`iou-wrk`) and kernel time included. "
                 "Self time by object and symbol, then by thread kind, as shares of that side's samples. "
                 "Full listings: `bench/out/%s/results/*.profile.txt`.\n" % machine.get("mode", "full"))
        for s, p in profiles:
            sections, cur = {}, None
            for line in open(p, errors="replace"):
                if line.startswith("## "):
                    cur = line[3:].strip()
                    sections[cur] = []
                elif cur and line.strip() and not line.startswith("#"):
                    sections[cur].append(line.rstrip()[:150])
            L.append("**%s**\n" % s)
            # One line per side: where its CPU goes (thread kinds, top symbols).
            for side in ("server", "client"):
                kinds = sections.get("%s: by thread kind (iou-wrk: io_uring async workers)" % side, [])
                syms = [v for k, v in sections.items() if k.startswith(side + ": self time")]
                syms = syms[0] if syms else []
                if not kinds and not syms:
                    continue
                k = ", ".join("%s %s" % (x.split()[0], x.split()[1]) for x in kinds[:3])
                top = "; ".join("%s %s" % (x.split()[0], x.split()[-1]) for x in syms[:3])
                L.append("- %s: threads %s; top symbols %s" % (side, k or "?", top or "?"))
            L.append("")
            for title, lines in sections.items():
                L.append("%s:\n" % title)
                L.append("```")
                L.extend(lines[:12 if "symbol" in title else 6])
                L.append("```\n")

    L.append("## Machine and versions\n")
    L.append("| | |")
    L.append("|---|---|")
    for k in ["date", "cpu", "nproc", "memory", "kernel", "os", "tmpfs", "ferry", "build", "swift", "cp", "rsync",
              "ssh", "scp_cipher", "gridftp", "xrootd", "rclone", "iperf3", "zstd", "python", "perf", "settings", "sizes",
              "disk_dir"]:
        if k in machine:
            L.append("| %s | %s |" % (k, machine[k].replace("|", "\\|")))
    L.append("")

    L.append("## Data sets\n")
    L.append("- **bigfile**: random bytes (AES-128-CTR keystream from `openssl enc`), in tmpfs.")
    L.append("- **sink**: the bigfile data set, read by each tool's server from tmpfs and written by its client "
             "into a device node (`mknod DIR/null c 1 3`), never the system's `/dev/null`.")
    L.append("- **smallfiles**: random 4 KiB files, 50 per directory, two directory levels "
             "(`bench/gen_tree.py`), in tmpfs.")
    L.append("- **smiles**: `bench/gen_smiles.py --size 2147483648 --seed 42` (2 GiB; `--quick`: 64 MiB): drug-like molecules assembled from ring systems, "
             "linkers and substituents, with stereo centres, charges and salts; one `SMILES<TAB>ID<TAB>MW` line "
             "each; zstd -1 ratio %s. First lines: `%s`" % (data.get("smiles_zstd1_ratio", "?"),
                                                              data.get("smiles_sample", "?").strip(" |")))
    L.append("- **mixed**: `bench/gen_tree.py --max-size 65536 --large-files 4 --seed 42`: 4 random files "
             "of 256 MiB under `large/`, plus 10,000 random files of 4..64 KiB (sizes uniform, seeded), "
             "50 per directory, two directory levels, in tmpfs (`--quick`: 4 × 16 MiB and 1,000 files).")
    L.append("- Before the first round of each scenario the memory is warmed: a file of the data set's size "
             "is written to tmpfs and deleted just before the first timed command (first writes into memory "
             "the host has not yet given the machine are several times slower). Likewise each copy is "
             "kept until just before the next timed command starts, then deleted, so that the memory it "
             "freed is reused at once: memory left free for ~20 s (during iperf3, say) goes back to the "
             "host, and writing it again is 2-3x slower (`cp` of 4 GiB: 2.6-4.4 s back to back, 10 s "
             "after 20 s idle). Some of the spread between rounds below is still this effect.")
    L.append("- Order: in round N the tools run in the list order rotated by N, reversed in even rounds.\n")

    L.append("## Exact commands\n")
    L.append("Servers, all bound to 127.0.0.1 and started by `bench/run` with private configurations "
             "(under `/dev/shm/ferry-bench`), a fresh one for each run: `ferry serve --root DST --listen "
             "127.0.0.1:0 --token-file TOKEN`; `rsync --daemon` (module `bench`, `use chroot = no`, uid/gid "
             "root); a private `sshd` (ListenAddress 127.0.0.1, own ed25519 host key, root by key only, "
             "internal-sftp); `globus-gridftp-server` (anonymous clear-text login mapped to the user nobody, "
             "control, data and IPC interfaces 127.0.0.1, writes restricted to its directory); `xrootd` "
             "(`xrd.port`, `xrd.allow host localhost`, `all.export /`, `oss.localroot DIR`, run as nobody with "
             "`-R nobody`; xrootd cannot bind to one address, so it and `xrdcp` run in a private network "
             "namespace that holds only a loopback interface); `rclone serve http DATADIR --addr "
             "127.0.0.1:PORT`; and `iperf3 -s -B 127.0.0.1 -p PORT` (one per scenario). "
             "Commands as run (first run; `TOOL (server)` lines are the servers):\n")
    for s in SCENARIOS:
        if s in scen and scen[s]["commands"]:
            L.append("**%s**\n" % s)
            L.append("```")
            for c in scen[s]["commands"]:
                L.append("# %s" % c["tool"])
                L.append(c["command"])
            L.append("```\n")

    L.append("## Not covered here\n")
    L.append("- Ferry's defaults encrypt (`--protection private`); `ferry-clear` is the like-for-like row "
             "against the tools below, which run unencrypted.")
    L.append("- GridFTP and XRootD run without GSI/X.509 or any other authentication (anonymous FTP login, "
             "xrootd without `sec.protocol`), rclone over plain HTTP: none of them encrypts or authenticates "
             "here, as on a trusted data-transfer network; scp encrypts (AES-128-GCM).")
    if not profiles:
        L.append("- No profile in this run: `bench/run --profile` adds one `perf record -a -g` of a Ferry "
                 "run per scenario.")
    L.append("")

    # Put the kept sections back after the generated section they followed (or at the end).
    text = "\n".join(L)
    for after, body in kept_sections(a.report):
        if after:
            i = text.find("\n## " + after + "\n")
            if i >= 0:
                j = text.find("\n## ", i + 4)
                j = len(text) if j < 0 else j
                text = text[:j] + "\n" + body + text[j:]
                continue
        text += "\n" + body
    with open(a.report, "w") as fh:
        fh.write(text)
    print("report.py: wrote %s%s" % (a.report, " and " + ", ".join(pngs) if pngs else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
