#!/bin/bash
# What a search index costs a registration (issue 21, item 4; bench/RESULTS.md, "search that
# scales"): N rows shaped like the zinc tree (bench/gen_catalog.py's names, random sizes and
# mtimes) into the catalog's `files` table, without the daemon: PostgreSQL 15 by COPY (its own
# cluster in a temporary directory, fsync off) and SQLite by batched inserts of 10,000 (WITHOUT
# ROWID, WAL), with no extra index, a (dataset, name) B-tree, that and (dataset, size),
# (dataset, mtime_ns), and on PostgreSQL a pg_trgm GIN index on names. Prints rows/s, the size,
# and an infix and a prefix search's time.
#
#   N=2000000 bench/index_cost.sh      (as root: the cluster runs as the postgres user)
set -e
N=${N:-2000000}
w=$(mktemp -d /tmp/ferry-idxcost-XXXXXX); chmod 755 "$w"
d=$w/pg; mkdir -p $d; chown postgres $d
trap 'su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D $d/data stop -m immediate" >/dev/null 2>&1 || true; rm -rf "$w"' EXIT
B=/usr/lib/postgresql/15/bin
su postgres -c "$B/initdb -D $d/data -A trust -E UTF8 --locale=C.UTF-8 >/dev/null"
su postgres -c "$B/pg_ctl -D $d/data -o '-k $d -c listen_addresses= -c shared_buffers=1GB -c max_wal_size=8GB -c fsync=off' -l $d/log start >/dev/null"
sleep 2
python3 - $N > "$w/rows.tsv" <<'PY'
import sys, random
random.seed(7)
n=int(sys.argv[1])
tr=["H%02dP%03d"%(h,p) if p>=0 else "H%02dM%03d"%(h,-p) for h in range(4,31) for p in range(-100,501,60)]
per=n//len(tr)
for t in tr:
    for i in range(per):
        print("1\tzinc/%s/%s\t%s.%07d.smi.gz\t%d\t%d\t420\t\\N\t0\tf\t\\N\t0" % (t[:3], t, t, i, random.choice((1024,65536,1<<20,1<<22,1<<26)), 1700000000000000000 + random.randrange(10**15)))
PY
wc -l < $w/rows.tsv
P="$B/psql -h $d -U postgres -qAt"
for variant in none name name_size_mtime trgm; do
  $P -c "DROP TABLE IF EXISTS files; CREATE TABLE files (dataset BIGINT NOT NULL, dir TEXT COLLATE \"C\" NOT NULL, name TEXT COLLATE \"C\" NOT NULL, size BIGINT NOT NULL, mtime_ns BIGINT NOT NULL, mode BIGINT NOT NULL, digest TEXT, chunk_size BIGINT NOT NULL DEFAULT 0, kind TEXT NOT NULL, target TEXT, seq BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (dataset, dir, name)); CHECKPOINT"
  case $variant in
    name) $P -c "CREATE INDEX files_name ON files (dataset, name)";;
    name_size_mtime) $P -c "CREATE INDEX files_name ON files (dataset, name); CREATE INDEX files_size ON files (dataset, size); CREATE INDEX files_mtime ON files (dataset, mtime_ns)";;
    trgm) $P -c "CREATE EXTENSION IF NOT EXISTS pg_trgm; CREATE INDEX files_trgm ON files USING gin (name gin_trgm_ops)";;
  esac
  a=$(date +%s.%N)
  $P -c "\\copy files FROM '$w/rows.tsv'"
  b=$(date +%s.%N)
  $P -c "VACUUM ANALYZE files"
  sz=$($P -c "SELECT pg_total_relation_size('files')/1048576")
  q1a=$(date +%s.%N); $P -c "SELECT count(*) FROM files WHERE dataset=1 AND name LIKE '%0001234%'" >/dev/null; q1b=$(date +%s.%N)
  q2a=$(date +%s.%N); $P -c "SELECT count(*) FROM files WHERE dataset=1 AND name LIKE 'H17P020.00012%'" >/dev/null; q2b=$(date +%s.%N)
  echo "pg $variant copy_rows_per_s=$(python3 -c "print(int($N/($b-$a)))") table_mib=$sz infix_s=$(python3 -c "print('%.3f'%($q1b-$q1a))") prefix_s=$(python3 -c "print('%.3f'%($q2b-$q2a))")"
done
su postgres -c "$B/pg_ctl -D $d/data stop >/dev/null"
trap 'rm -rf "$w"' EXIT
# SQLite: WITHOUT ROWID like the catalog, executemany in batches of 10,000 per transaction.
W="$w" python3 - $N <<'PY'
import sqlite3, sys, time, os
n=int(sys.argv[1])
w=os.environ["W"]
rows=[l.rstrip("\n").split("\t") for l in open(w + "/rows.tsv")]
rows=[(1,r[1],r[2],int(r[3]),int(r[4]),420,None,0,'f',None,0) for r in rows]
for variant in ("none","name","name_size_mtime"):
    p=w + "/s.db"
    for f in (p,p+"-wal",p+"-shm"):
        if os.path.exists(f): os.remove(f)
    c=sqlite3.connect(p); c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=NORMAL"); c.execute("PRAGMA cache_size=-65536")
    c.execute("CREATE TABLE files (dataset INTEGER NOT NULL, dir TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL, digest TEXT, chunk_size INTEGER NOT NULL DEFAULT 0, kind TEXT NOT NULL, target TEXT, seq INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (dataset, dir, name)) WITHOUT ROWID")
    if variant!="none": c.execute("CREATE INDEX files_name ON files (dataset, name)")
    if variant=="name_size_mtime": c.execute("CREATE INDEX files_size ON files (dataset, size)"); c.execute("CREATE INDEX files_mtime ON files (dataset, mtime_ns)")
    c.commit()
    a=time.time()
    for k in range(0,len(rows),10000):
        c.executemany("INSERT INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows[k:k+10000]); c.commit()
    b=time.time()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    sz=os.path.getsize(p)>>20
    q=time.time(); c.execute("SELECT count(*) FROM files WHERE dataset=1 AND name GLOB '*0001234*'").fetchall(); q1=time.time()-q
    q=time.time(); c.execute("SELECT count(*) FROM files WHERE dataset=1 AND name GLOB 'H17P020.00012*'").fetchall(); q2=time.time()-q
    print("sqlite %s insert_rows_per_s=%d db_mib=%d infix_s=%.3f prefix_s=%.3f" % (variant, n/(b-a), sz, q1, q2))
PY
