#!/usr/bin/env bash
# Opt-in stress test: many concurrent writers on one repository, forget+prune running alongside.
#
#   scripts/stress-writers.sh [--backend local|garage1|garage3] [--writers N] [--duration SECS]
#       [--cairn-bin PATH] [--dir DIR] [--port BASE] [--restart-node|--no-restart-node]
#       [--retry-lock DUR] [--cmd-timeout SECS] [--json FILE] [--throughput [--reps N]] [--scale F]
#
# N writers (own source tree ~25-35 MB, own CAIRN_CACHE_DIR, --host nodeK) mutate their tree
# and back it up in a loop for SECS; one loop runs `forget --keep-last 2 --prune` every 1-3 s.
# garage3: writers and the prune loop use nodes 1 and 2; node 3 is SIGKILLed at 1/3 of the run
# and restarted at 2/3 (--no-restart-node: not). Then check --read-data, restore every remaining
# snapshot whose source state was recorded (sha256/mode/mtime manifest) and compare exactly.
# Exits non-zero if a backup, prune, check or restore failed, or a snapshot is missing or differs.
# --throughput: 1 writer backing up the N sources one after another vs N concurrent writers,
# fresh repository each, alternated --reps times (default 3); medians and ratio.
# --scale F multiplies the sizes of the big files of each source (default 1: ~25-35 MB per source;
# e.g. 20: ~0.5 GB), for throughput runs long enough to time.
# Every successful backup's --json summary also gives index_files, index_bytes and
# index_bytes_fetched (index files loaded, their bytes, and the bytes fetched from the repository
# rather than the local cache; `-` if the binary does not report them): median and max per writer,
# medians over all backups, and the repository's index size at the end.
# Work dir DIR/run-* (default DIR /var/tmp/cairn-stress) is removed on success, kept on failure.
# --retry-lock DUR is passed to every cairn command (default none: lock conflicts are failures);
# --cmd-timeout (default 600 s) bounds each command. Needs python3, jq, timeout.
# Garage quirk: for a few minutes after node 3 is back, ListObjects through nodes 1 and 3 can still
# name objects deleted while it was away (HEAD: 404), so check may report "snapshot … not found".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
CAIRN=""; DIR=/var/tmp/cairn-stress; PORT=39300; BACKEND=local; WRITERS=4; DURATION=120
RESTART=""; JSON_OUT=""; THROUGHPUT=0; REPS=3; RETRY_LOCK=""; CMD_TIMEOUT=600; SCALE=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --backend) BACKEND=$2; shift 2 ;;
    --writers) WRITERS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --cairn-bin) CAIRN=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --restart-node) RESTART=1; shift ;;
    --no-restart-node) RESTART=0; shift ;;
    --retry-lock) RETRY_LOCK=$2; shift 2 ;;
    --cmd-timeout) CMD_TIMEOUT=$2; shift 2 ;;
    --json) JSON_OUT=$2; shift 2 ;;
    --throughput) THROUGHPUT=1; shift ;;
    --reps) REPS=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
  esac
done
case $BACKEND in local|garage1|garage3) ;; *) echo "stress: bad --backend $BACKEND" >&2; exit 2 ;; esac
[[ $WRITERS =~ ^[1-9][0-9]*$ && $DURATION =~ ^[1-9][0-9]*$ && $REPS =~ ^[1-9][0-9]*$ ]] || {
  echo "stress: --writers, --duration and --reps take positive integers" >&2; exit 2; }
if ! [[ $SCALE =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || ! awk -v s="$SCALE" 'BEGIN { exit !(s > 0) }'; then
  echo "stress: --scale takes a positive number" >&2; exit 2
fi
export STRESS_SCALE=$SCALE
[[ -z $RESTART ]] && RESTART=$([[ $BACKEND == garage3 ]] && echo 1 || echo 0)
if [[ $RESTART == 1 && $BACKEND != garage3 ]]; then
  echo "stress: --restart-node needs --backend garage3" >&2; exit 2
fi
if [[ -z $CAIRN ]]; then
  cargo build --release -q -p cairn-cli --manifest-path "$root/Cargo.toml"
  CAIRN=$root/target/release/cairn
fi
CAIRN=$(cd "$(dirname "$CAIRN")" && pwd)/$(basename "$CAIRN")
[[ -x $CAIRN ]] || { echo "stress: $CAIRN is not executable" >&2; exit 2; }
[[ -n $JSON_OUT ]] && JSON_OUT=$(cd "$(dirname "$JSON_OUT")" && pwd)/$(basename "$JSON_OUT")
PY=$(python3 -c 'import sys; print(sys.executable)')   # skip pyenv shims in the loops
SHARED_S3=${CAIRN_SHARED_S3:-$(cd "$root/.." && pwd)/shared/s3}

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
GDIR=$DIR/garage
work=$(mktemp -d "$DIR/run-$(date +%Y%m%d-%H%M%S).XXXX")
mkdir -p "$work"/{src,cache,saved,logs,res,restore}
logs=$work/logs res=$work/res
export CAIRN_PASSWORD=stress-test
PIDS=()
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do
    if kill -0 "$p" 2>/dev/null; then pkill -TERM -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; fi
  done
  if [[ $rc == 0 ]]; then
    [[ $BACKEND != local ]] && { "$here/s3-server.sh" down -d "$GDIR" >/dev/null 2>&1 || true; }
    rm -rf "$work"; rmdir "$DIR" 2>/dev/null || true
  else
    [[ $BACKEND != local ]] && { "$SHARED_S3/garage-down.sh" -d "$GDIR" >/dev/null 2>&1 || true; }
    echo "stress: FAILED (exit $rc); kept $work (logs in $work/logs, results in $work/res)" >&2
    [[ $BACKEND != local ]] && echo "stress: Garage data kept in $GDIR (restart: $GDIR/node<i>/start.sh)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
t0=$SECONDS
log() { echo "== [$((SECONDS - t0))s] $*" >&2; }
now_us() { echo "${EPOCHREALTIME/./}"; }
sleep_until_us() { local us=$(($1 - $(now_us))); (( us <= 0 )) || sleep "$((us / 1000000)).$(printf %06d $((us % 1000000)))"; }

# ---------------------------------------------------------------------------------------------
# Helper: deterministic source trees, manifests, summaries.
cat >"$work/helper.py" <<'PY'
import hashlib, json, os, random, re, stat, statistics, sys

def sizes(r):  # small-file size distribution: mean ~20 KiB
    x = r.random()
    return r.randint(100, 4096) if x < .6 else r.randint(4096, 32768) if x < .9 else r.randint(32768, 262144)

SCALE = float(os.environ.get("STRESS_SCALE", "1"))  # --scale: sizes of the big files
def big(n):
    return max(1, int(n * SCALE))

def rbytes(r, n):  # r.randbytes(n); in 64 MiB pieces above that (getrandbits takes < 2**31 bits)
    return r.randbytes(n) if n <= 1 << 26 else b"".join(r.randbytes(min(1 << 26, n - i)) for i in range(0, n, 1 << 26))

WORDS = b"alpha beta gamma delta pod node kubelet etcd lease ready error warn info debug".split()
def text(r, n):
    out = bytearray()
    while len(out) < n:
        out += b"%d %s %s %s\n" % (r.randint(0, 1 << 40), r.choice(WORDS), r.choice(WORDS), r.choice(WORDS))
    return bytes(out[:n])

def write(path, data, mode=None):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(tmp, mode)
    os.rename(tmp, path)

def small_files(src):
    out = []
    for d, _, fs in os.walk(os.path.join(src, "small")):
        out += [os.path.join(d, f) for f in fs if not os.path.islink(os.path.join(d, f))]
    return sorted(out)

SUBDIRS = ["a", "b", "c", "d/x", "d/y", "e", "f/g/h"]

def generate(src, r):
    os.makedirs(src, exist_ok=True)
    for s in SUBDIRS:
        os.makedirs(os.path.join(src, "small", s), exist_ok=True)
    for i in range(240):
        write(os.path.join(src, "small", r.choice(SUBDIRS), "f%04d.bin" % i), r.randbytes(sizes(r)),
              r.choice([0o644, 0o644, 0o600, 0o755]))
    write(os.path.join(src, "small", "a", "with space.txt"), text(r, 3000))
    write(os.path.join(src, "small", "b", "ünïcode-文件.bin"), r.randbytes(5000))
    write(os.path.join(src, "small", "c", "empty"), b"")
    os.makedirs(os.path.join(src, "empty-dir"), exist_ok=True)
    os.makedirs(os.path.join(src, "private"), exist_ok=True)
    os.chmod(os.path.join(src, "private"), 0o700)
    write(os.path.join(src, "private", "token"), r.randbytes(64), 0o600)
    os.makedirs(os.path.join(src, "big"), exist_ok=True)
    write(os.path.join(src, "big", "db.log"), text(r, big(r.randint(2, 4) << 20)))      # compressible
    for i in range(4):
        write(os.path.join(src, "big", "vol%d.img" % i), rbytes(r, big(r.randint(2 << 20, 6 << 20))))
    write(os.path.join(src, "log.txt"), text(r, 65536))
    os.symlink("big/vol0.img", os.path.join(src, "link-vol0"))
    os.symlink("does/not/exist", os.path.join(src, "link-dangling"))
    os.mkfifo(os.path.join(src, "fifo"))

def mutate(src, r, it):
    files = small_files(src)
    for p in r.sample(files, min(5, len(files))):            # rewrite some files
        write(p, r.randbytes(sizes(r)), os.stat(p).st_mode & 0o7777)
    bigs = sorted(os.path.join(src, "big", f) for f in os.listdir(os.path.join(src, "big")))
    b = r.choice(bigs)                                        # patch a big file in place
    size = os.path.getsize(b)
    with open(b, "r+b") as f:
        for _ in range(r.randint(1, 3)):
            n = r.randint(4096, 512 << 10)
            f.seek(r.randint(0, max(0, size - n)))
            f.write(r.randbytes(n))
    if it % 5 == 0:                                           # replace a big file (new inode)
        b = r.choice(bigs)
        write(b, rbytes(r, big(r.randint(2 << 20, 6 << 20))))
    lp = os.path.join(src, "log.txt")                         # append (rotate at 4 MiB)
    if os.path.getsize(lp) > 4 << 20:
        write(lp, text(r, 65536))
    with open(lp, "ab") as f:
        f.write(text(r, r.randint(4096, 65536)))
    for n in range(3):                                        # add small files
        write(os.path.join(src, "small", r.choice(SUBDIRS), "n%05d-%d.bin" % (it, n)), r.randbytes(sizes(r)))
    files = small_files(src)
    if len(files) > 50:                                       # delete one
        os.unlink(r.choice(files))
    if it % 3 == 0:                                           # chmod one, move one
        files = small_files(src)
        os.chmod(r.choice(files), r.choice([0o600, 0o644, 0o755]))
        p = r.choice(files)
        os.rename(p, os.path.join(src, "small", r.choice(SUBDIRS), "mv%05d-" % it + os.path.basename(p)))

def manifest(top):
    lines = []
    def entry(p, rel):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            content, size = h.hexdigest(), st.st_size
        elif stat.S_ISLNK(st.st_mode):
            content, size = os.readlink(p), st.st_size
        else:
            content, size = "-", "-"
        lines.append(json.dumps([rel, "%o" % st.st_mode, "%d:%d" % (st.st_uid, st.st_gid), size,
                                 st.st_mtime_ns, content], ensure_ascii=False))
    entry(top, ".")
    for d, ds, fs in os.walk(top):
        ds.sort()
        for n in sorted(ds + fs):
            p = os.path.join(d, n)
            entry(p, os.path.relpath(p, top))
    lines.sort()
    sys.stdout.write("\n".join(lines) + "\n")

def tsv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.rstrip("\n").split("\t") for l in f if l.strip()]

def med(xs):
    return statistics.median(xs) if xs else None

def fmt(x, unit="s"):
    return "-" if x is None else "%.2f %s" % (x, unit)

# backup-K.tsv columns: it rc t1 dur_us snapshot processed added endpoint index_files index_bytes index_bytes_fetched
INDEX_FIELDS = ("index_files", "index_bytes", "index_bytes_fetched")

def index_values(rows):
    """{field: [values of the rows that report it]} for the index fields of backup rows."""
    out = {f: [] for f in INDEX_FIELDS}
    for r in rows:
        for i, f in enumerate(INDEX_FIELDS):
            v = r[8 + i] if len(r) > 8 + i else ""
            if v.isdigit():
                out[f].append(int(v))
    return out

def med_max(xs):
    return {"n": len(xs), "median": med(xs), "max": max(xs) if xs else None}

def fnum(x, kb=False):
    if x is None:
        return "-"
    return "%.1f kB" % (x / 1e3) if kb else ("%g" % x)

def errdigest(logs, failed, limit=10):
    """Print the stderr of failed commands, and a count of distinct last lines."""
    counts = {}
    for i, (what, errfile) in enumerate(failed):
        try:
            with open(errfile, errors="replace") as f:
                lines = [l.rstrip() for l in f if l.strip()]
        except OSError:
            lines = ["(no stderr file)"]
        key = lines[-1] if lines else "(empty stderr)"
        key = re.sub(r"\b[0-9a-f]{8,64}\b", "<id>", key)
        key = re.sub(r"\bpid \d+", "pid <n>", key)
        key = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?", "<time>", key)
        counts[key] = counts.get(key, 0) + 1
        if i < limit:
            print("---- %s (%s)" % (what, os.path.basename(errfile)))
            for l in lines[-8:]:
                print("   " + l)
    if len(failed) > limit:
        print("---- ... %d more failed commands, stderr in %s" % (len(failed) - limit, logs))
    if failed:
        print("distinct final stderr lines of failed commands:")
        for k, v in sorted(counts.items(), key=lambda kv: -kv[1]):
            print("  %4d x %s" % (v, k))

def summary(work, cfg_json, out_json):
    cfg = json.loads(cfg_json)
    res, logs = os.path.join(work, "res"), os.path.join(work, "logs")
    run = dict(l for l in tsv(os.path.join(res, "run.tsv")))
    wall = (int(run["loops_end_us"]) - int(run["loops_start_us"])) / 1e6
    try:
        with open(os.path.join(res, "snapshots.json")) as f:
            snaps = json.load(f)
        snaps_ok = True
    except Exception:
        snaps, snaps_ok = [], False
    existing = {s["id"] for s in snaps}
    failed_cmds, writers, lost = [], [], []
    tot_ok = tot_fail = tot_bytes = tot_added = 0
    all_index = {f: [] for f in INDEX_FIELDS}
    for k in range(1, cfg["writers"] + 1):
        rows = tsv(os.path.join(res, "backup-%d.tsv" % k))
        ok = [r for r in rows if r[1] == "0"]
        bad = [r for r in rows if r[1] != "0"]
        durs = [int(r[3]) / 1e6 for r in ok]
        b = sum(int(r[5] or 0) for r in ok)
        a = sum(int(r[6] or 0) for r in ok)
        for r in bad:
            failed_cmds.append(("backup writer %d iteration %s exit %s after %.1f s" % (k, r[0], r[1], int(r[3]) / 1e6),
                                os.path.join(logs, "backup-%d-%s.err" % (k, r[0]))))
        # A snapshot with fewer than 2 newer backup attempts of its writer must survive keep-last 2.
        for idx, r in enumerate(rows):
            if r[1] == "0" and r[4] and len(rows) - 1 - idx < 2 and snaps_ok and r[4] not in existing:
                lost.append({"writer": k, "iteration": int(r[0]), "snapshot": r[4]})
        iv = index_values(ok)
        for f in INDEX_FIELDS:
            all_index[f] += iv[f]
        writers.append({"writer": k, "host": "node%d" % k, "backups_ok": len(ok), "backups_failed": len(bad),
                        "median_backup_s": med(durs), "max_backup_s": max(durs) if durs else None,
                        "bytes_processed": b, "data_added": a,
                        **{f: med_max(iv[f]) for f in INDEX_FIELDS}})
        tot_ok += len(ok); tot_fail += len(bad); tot_bytes += b; tot_added += a
    prows = tsv(os.path.join(res, "prune.tsv"))
    pok = [r for r in prows if r[1] == "0"]
    pbad = [r for r in prows if r[1] != "0"]
    for r in pbad:
        failed_cmds.append(("forget --prune iteration %s exit %s after %.1f s" % (r[0], r[1], int(r[3]) / 1e6),
                            os.path.join(logs, "prune-%s.err" % r[0])))
    removed = sum(int(r[4]) for r in pok if r[4].isdigit())
    crow = (tsv(os.path.join(res, "check.tsv")) or [["missing", "0"]])[0]
    if crow[0] != "0":
        failed_cmds.append(("check --read-data exit %s" % crow[0], os.path.join(logs, "check.err")))
    vrows = tsv(os.path.join(res, "verify.tsv"))
    vstat = {}
    for r in vrows:
        vstat[r[2]] = vstat.get(r[2], 0) + 1
        if r[2] == "restore-failed":
            failed_cmds.append(("restore %s (%s)" % (r[0][:8], r[1]), os.path.join(logs, "restore-%s.err" % r[0])))
    irow = (tsv(os.path.join(res, "repo-index.tsv")) or [["", "", ""]])[0] + ["", "", ""]
    repo_index = {"files_listed": int(irow[0]) if irow[0].isdigit() else None,   # cairn list index
                  "objects": int(irow[1]) if irow[1].isdigit() else None,        # files/objects under index/
                  "bytes": int(irow[2]) if irow[2].isdigit() else None}
    events = [{"t_s": round((int(r[0]) - int(run["loops_start_us"])) / 1e6, 1), "event": r[1]}
              for r in tsv(os.path.join(res, "events.tsv"))]
    out = {
        "backend": cfg["backend"], "writers": cfg["writers"], "duration_s": cfg["duration"],
        "restart_node": cfg["restart"], "cairn": cfg["cairn"], "loops_wall_s": round(wall, 2),
        "backups_ok": tot_ok, "backups_failed": tot_fail, "per_writer": writers,
        "aggregate_bytes_processed_per_s": tot_bytes / wall if wall > 0 else None,
        "aggregate_data_added_per_s": tot_added / wall if wall > 0 else None,
        "prunes_ok": len(pok), "prunes_failed": len(pbad),
        "median_prune_s": med([int(r[3]) / 1e6 for r in pok]), "snapshots_removed": removed,
        "check_ok": crow[0] == "0", "check_s": int(crow[1]) / 1e6,
        "snapshots_listed": len(snaps) if snaps_ok else None,
        "restores_verified": vstat.get("ok", 0), "restores_mismatched": vstat.get("mismatch", 0),
        "restores_failed": vstat.get("restore-failed", 0), "snapshots_without_copy": vstat.get("no-copy", 0),
        "snapshots_lost": lost, "events": events,
        "index_per_backup": {f: med_max(all_index[f]) for f in INDEX_FIELDS},
        "repo_index_at_end": repo_index,
    }
    fail = (tot_fail or pbad or crow[0] != "0" or not snaps_ok or vstat.get("mismatch") or
            vstat.get("restore-failed") or lost or tot_ok == 0)
    out["pass"] = not fail
    print("==================== cairn stress-writers summary ====================")
    print("backend %s, %d writers, %d s (loops ran %.1f s), node restart: %s" %
          (cfg["backend"], cfg["writers"], cfg["duration"], wall, "yes" if cfg["restart"] else "no"))
    for e in events:
        print("  event at %6.1f s: %s" % (e["t_s"], e["event"]))
    print("%-8s %6s %6s %10s %10s %12s %12s" % ("writer", "ok", "failed", "median", "max", "processed", "added"))
    for w in writers:
        print("%-8s %6d %6d %10s %10s %9.1f MB %9.1f MB" % (w["host"], w["backups_ok"], w["backups_failed"],
              fmt(w["median_backup_s"]), fmt(w["max_backup_s"]), w["bytes_processed"] / 1e6, w["data_added"] / 1e6))
    print("index loaded per successful backup (median / max; fetched = from the repository, not the local cache):")
    print("%-8s %6s %15s %23s %23s" % ("writer", "n", "index files", "index bytes", "fetched bytes"))
    for w in writers:
        print("%-8s %6d %15s %23s %23s" % (w["host"], w["index_files"]["n"],
              "%s / %s" % (fnum(w["index_files"]["median"]), fnum(w["index_files"]["max"])),
              "%s / %s" % (fnum(w["index_bytes"]["median"], True), fnum(w["index_bytes"]["max"], True)),
              "%s / %s" % (fnum(w["index_bytes_fetched"]["median"], True),
                           fnum(w["index_bytes_fetched"]["max"], True))))
    ai = out["index_per_backup"]
    print("%-8s %6d %15s %23s %23s" % ("all", ai["index_files"]["n"],
          "%s / %s" % (fnum(ai["index_files"]["median"]), fnum(ai["index_files"]["max"])),
          "%s / %s" % (fnum(ai["index_bytes"]["median"], True), fnum(ai["index_bytes"]["max"], True)),
          "%s / %s" % (fnum(ai["index_bytes_fetched"]["median"], True), fnum(ai["index_bytes_fetched"]["max"], True))))
    print("repository index at the end: %s index files listed by cairn, %s objects, %s" %
          (fnum(repo_index["files_listed"]), fnum(repo_index["objects"]), fnum(repo_index["bytes"], True)))
    print("backups: %d ok, %d failed; aggregate %.1f MB/s processed, %.1f MB/s added" %
          (tot_ok, tot_fail, tot_bytes / wall / 1e6 if wall else 0, tot_added / wall / 1e6 if wall else 0))
    print("forget --prune: %d ok, %d failed, median %s, %d snapshots removed" %
          (len(pok), len(pbad), fmt(out["median_prune_s"]), removed))
    print("check --read-data: %s (%.1f s)" % ("ok" if crow[0] == "0" else "FAILED (exit %s)" % crow[0], out["check_s"]))
    print("snapshots left: %s; restores verified exact: %d, mismatched: %d, restore failed: %d, no saved copy: %d" %
          (out["snapshots_listed"], out["restores_verified"], out["restores_mismatched"],
           out["restores_failed"], out["snapshots_without_copy"]))
    for l in lost:
        print("LOST: writer %d iteration %d snapshot %s was a newest-2 snapshot but is gone" %
              (l["writer"], l["iteration"], l["snapshot"][:8]))
    for r in vrows:
        if r[2] == "mismatch":
            print("MISMATCH: snapshot %s (%s), diff in %s" % (r[0][:8], r[1], os.path.join(logs, "verify-%s.diff" % r[0])))
    errdigest(logs, failed_cmds)
    print("RESULT: %s" % ("PASS" if out["pass"] else "FAIL"))
    if out_json:
        with open(out_json, "w") as f:
            json.dump(out, f, indent=2)
    return 0 if out["pass"] else 1

def tp_summary(work, cfg_json, out_json):
    cfg = json.loads(cfg_json)
    rows = tsv(os.path.join(work, "res", "throughput.tsv"))  # mode rep rc wall_us
    seq = [int(r[3]) / 1e6 for r in rows if r[0] == "sequential"]
    par = [int(r[3]) / 1e6 for r in rows if r[0] == "concurrent"]
    bad = [r for r in rows if r[2] != "0"]
    ms, mp = med(seq), med(par)
    mb = cfg["bytes"] / 1e6
    out = {"backend": cfg["backend"], "writers": cfg["writers"], "bytes": cfg["bytes"], "reps": cfg["reps"],
           "sequential_s": seq, "concurrent_s": par, "median_sequential_s": ms, "median_concurrent_s": mp,
           "speedup": ms / mp if ms and mp else None, "runs_failed": len(bad), "pass": not bad}
    print("==================== cairn throughput: 1 writer vs %d writers ====================" % cfg["writers"])
    print("backend %s, %d sources, %.1f MB in total, %d repetitions (fresh repository each)" %
          (cfg["backend"], cfg["writers"], mb, cfg["reps"]))
    print("(a) 1 writer, sources one after another: %s  median %s = %.1f MB/s" %
          (" ".join("%.2f" % x for x in seq), fmt(ms), mb / ms if ms else 0))
    print("(b) %d concurrent writers:                %s  median %s = %.1f MB/s" %
          (cfg["writers"], " ".join("%.2f" % x for x in par), fmt(mp), mb / mp if mp else 0))
    print("ratio (a)/(b): %s" % ("%.2fx" % out["speedup"] if out["speedup"] else "-"))
    errdigest(os.path.join(work, "logs"),
              [("%s rep %s exit %s" % (r[0], r[1], r[2]), os.path.join(work, "logs", "tp-%s-%s.err" % (r[0], r[1])))
               for r in bad])
    print("RESULT: %s" % ("PASS" if out["pass"] else "FAIL"))
    if out_json:
        with open(out_json, "w") as f:
            json.dump(out, f, indent=2)
    return 0 if out["pass"] else 1

def index_size(where, bucket="", prefix=""):
    """Print "objects<TAB>bytes" of the index files: a directory, or an S3 endpoint (boto3)."""
    if not where.startswith("http"):
        d = os.path.join(where, "index")
        n = b = 0
        for dp, _, fs in os.walk(d):
            for f in fs:
                n += 1
                b += os.path.getsize(os.path.join(dp, f))
        print("%d\t%d" % (n, b))
        return 0
    import boto3, botocore.config
    s3 = boto3.client("s3", endpoint_url=where, region_name=os.environ.get("AWS_REGION", "garage"),
                      config=botocore.config.Config(s3={"addressing_style": "path"}))
    n = b = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/index/"):
        for o in page.get("Contents", []):
            n += 1
            b += o["Size"]
    print("%d\t%d" % (n, b))
    return 0

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "mutate":  # mutate WRITER ITERATION SRC
        k, it, src = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        r = random.Random("cairn-stress/%d/%d" % (k, it))
        generate(src, r) if it == 1 else mutate(src, r, it)
    elif cmd == "manifest":
        manifest(sys.argv[2])
    elif cmd == "summary":
        sys.exit(summary(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else ""))
    elif cmd == "index-size":  # index-size DIR | index-size ENDPOINT BUCKET PREFIX
        sys.exit(index_size(*sys.argv[2:5]))
    elif cmd == "tp-summary":
        sys.exit(tp_summary(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else ""))
PY
helper() { "$PY" "$work/helper.py" "$@"; }

# ---------------------------------------------------------------------------------------------
# Repository location(s).
EP=()
if [[ $BACKEND == local ]]; then
  repo_at() { echo "$work/repo${1:+-$1}"; }   # repo_at [SUFFIX]
  ep_repo() { repo_at "${2:-}"; }             # ep_repo ENDPOINT_INDEX [SUFFIX]
  NEP=1
else
  nodes=${BACKEND#garage}
  log "starting a $nodes-node Garage cluster in $GDIR"
  eval "$("$here/s3-server.sh" up -n "$nodes" -d "$GDIR" -p "$PORT")"
  read -r -a EP <<<"$S3_ENDPOINTS"
  log "cluster up: ${EP[*]}"
  ep_repo() { echo "s3:${EP[$1]}/$S3_BUCKET/${2:-stress}"; }
  NEP=${#EP[@]}
fi
# writers and the prune loop stay off node 3, which may be restarted
WEP=$(( NEP >= 2 ? 2 : 1 ))
RL=(); [[ -n $RETRY_LOCK ]] && RL=(--retry-lock "$RETRY_LOCK")
cairn() {  # cairn ENDPOINT_INDEX [REPO_SUFFIX] -- ARGS...
  local i=$1 sfx=""; shift
  [[ $1 != -- ]] && { sfx=$1; shift; }
  shift
  timeout --kill-after=10 "$CMD_TIMEOUT" "$CAIRN" -q -r "$(ep_repo "$i" "$sfx")" "${RL[@]}" "$@"
}
wait_node3() {  # until node 3 answers (reads need quorum after a restart)
  for _ in $(seq 1 120); do
    CAIRN_CACHE_DIR=$work/cache/probe cairn 2 -- --no-cache snapshots >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
if [[ $THROUGHPUT == 1 ]]; then
  for k in $(seq 1 "$WRITERS"); do helper mutate "$k" 1 "$work/src/w$k"; done
  bytes=$(du -sb --apparent-size "$work"/src/w* | awk '{ s += $1 } END { printf "%.0f\n", s }')
  log "throughput: $WRITERS sources, $((bytes / 1000000)) MB; $REPS repetitions of (a) sequential, (b) concurrent"
  for rep in $(seq 1 "$REPS"); do
    for mode in sequential concurrent; do
      sfx=tp-$mode-$rep err=$logs/tp-$mode-$rep.err rc=0
      rm -rf "$work/cache"/tp-*
      CAIRN_CACHE_DIR=$work/cache/tp-init cairn 0 "$sfx" -- init --kdf-memory-mib 8 --kdf-iterations 1 \
        >/dev/null 2>>"$err" || rc=$?
      start=$(now_us)
      if [[ $mode == sequential ]]; then
        for k in $(seq 1 "$WRITERS"); do
          CAIRN_CACHE_DIR=$work/cache/tp-seq cairn 0 "$sfx" -- backup --host "node$k" "$work/src/w$k" \
            2>>"$err" || rc=$?
        done
      else
        bp=()
        for k in $(seq 1 "$WRITERS"); do
          CAIRN_CACHE_DIR=$work/cache/tp-w$k cairn $(( (k - 1) % WEP )) "$sfx" -- \
            backup --host "node$k" "$work/src/w$k" 2>>"$err" &
          bp+=($!)
        done
        for p in "${bp[@]}"; do wait "$p" || rc=$?; done
      fi
      end=$(now_us)
      printf '%s\t%s\t%s\t%s\n' "$mode" "$rep" "$rc" "$((end - start))" >>"$res/throughput.tsv"
      log "rep $rep $mode: $(( (end - start) / 1000 )) ms, exit $rc"
      [[ $BACKEND == local ]] && rm -rf "$(repo_at "$sfx")"
    done
  done
  cfg=$(printf '{"backend":"%s","writers":%d,"reps":%d,"bytes":%d}' "$BACKEND" "$WRITERS" "$REPS" "$bytes")
  helper tp-summary "$work" "$cfg" "$JSON_OUT"
  exit $?
fi

# ---------------------------------------------------------------------------------------------
CAIRN_CACHE_DIR=$work/cache/init cairn 0 -- init --kdf-memory-mib 8 --kdf-iterations 1 >/dev/null
log "repository $(ep_repo 0) initialised; $WRITERS writers + forget/prune loop for $DURATION s"
start_us=$(now_us)
end_us=$((start_us + DURATION * 1000000))

writer() {  # writer K: mutate, back up, record, save a manifest of what was backed up
  set +e
  local k=$1 src=$work/src/w$1 saved=$work/saved/node$1 ep=$(( ($1 - 1) % WEP )) it=0 t1 t2 rc sid line ix
  export CAIRN_CACHE_DIR=$work/cache/w$k
  mkdir -p "$saved"
  while (( $(now_us) < end_us )); do
    it=$((it + 1))
    helper mutate "$k" "$it" "$src" || { echo "writer $k: mutate failed" >&2; return 1; }
    t1=$(now_us)
    cairn "$ep" -- backup --host "node$k" --json "$src" >"$logs/backup-$k-$it.out" 2>"$logs/backup-$k-$it.err"
    rc=$?
    t2=$(now_us)
    line=$(jq -r 'select(.message_type == "summary") | "\(.snapshot_id)\t\(.total_bytes_processed)\t\(.data_added)"' \
      "$logs/backup-$k-$it.out" 2>/dev/null | tail -1)
    [[ -z $line ]] && line=$'\t\t'
    # index files loaded, their bytes, bytes fetched from the repository (empty if not reported)
    ix=$(jq -r 'select(.message_type == "summary")
                | [.index_files, .index_bytes, .index_bytes_fetched] | map(. // "" | tostring) | join("\t")' \
      "$logs/backup-$k-$it.out" 2>/dev/null | tail -1)
    [[ -z $ix ]] && ix=$'\t\t'
    sid=${line%%$'\t'*}
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$it" "$rc" "$t1" "$((t2 - t1))" "$line" "$ep" "$ix" >>"$res/backup-$k.tsv"
    if [[ $rc == 0 && -n $sid ]]; then
      helper manifest "$src" >"$saved/$sid.manifest"
      rm -f "$logs/backup-$k-$it.out" "$logs/backup-$k-$it.err"
    fi
  done
}

pruner() {  # forget --keep-last 2 --prune every 1-3 s
  set +e
  local j=0 t1 t2 rc n
  export CAIRN_CACHE_DIR=$work/cache/prune
  while (( $(now_us) < end_us )); do
    j=$((j + 1))
    t1=$(now_us)
    cairn 0 -- forget --keep-last 2 --prune --json >"$logs/prune-$j.out" 2>"$logs/prune-$j.err"
    rc=$?
    t2=$(now_us)
    n=$(jq -r '.removed | length' "$logs/prune-$j.out" 2>/dev/null | tail -1)
    printf '%s\t%s\t%s\t%s\t%s\n' "$j" "$rc" "$t1" "$((t2 - t1))" "${n:--}" >>"$res/prune.tsv"
    if [[ $rc == 0 ]]; then
      # the manifests of forgotten snapshots are not needed any more
      jq -r '.removed[]?' "$logs/prune-$j.out" 2>/dev/null | while read -r old; do
        rm -f "$work"/saved/*/"$old.manifest"
      done
      rm -f "$logs/prune-$j.out" "$logs/prune-$j.err"
    fi
    sleep $((RANDOM % 3 + 1))
  done
}

restarter() {  # garage3: SIGKILL node 3 at 1/3, restart it at 2/3 of the run
  set +e
  sleep_until_us $((start_us + DURATION * 1000000 / 3))
  "$SHARED_S3/garage-down.sh" -d "$GDIR" -N 3 -9 2>>"$logs/garage.log"
  printf '%s\t%s\n' "$(now_us)" "node 3 killed (SIGKILL)" >>"$res/events.tsv"
  log "node 3 killed (SIGKILL)"
  sleep_until_us $((start_us + DURATION * 2000000 / 3))
  "$GDIR/node3/start.sh"
  printf '%s\t%s\n' "$(now_us)" "node 3 restarted" >>"$res/events.tsv"
  log "node 3 restarted"
  if wait_node3; then
    printf '%s\t%s\n' "$(now_us)" "node 3 answers again" >>"$res/events.tsv"
  else
    printf '%s\t%s\n' "$(now_us)" "node 3 did not answer within 120 s" >>"$res/events.tsv"
  fi
}

for k in $(seq 1 "$WRITERS"); do writer "$k" & PIDS+=($!); done
pruner & PIDS+=($!)
nloops=${#PIDS[@]}
[[ $RESTART == 1 ]] && { restarter & PIDS+=($!); }
failed_loop=0
for p in "${PIDS[@]:0:nloops}"; do wait "$p" || failed_loop=1; done
loops_end=$(now_us)
for p in "${PIDS[@]:nloops}"; do wait "$p" || failed_loop=1; done   # the restarter
printf 'loops_start_us\t%s\nloops_end_us\t%s\n' "$start_us" "$loops_end" >"$res/run.tsv"
log "loops done"
[[ $failed_loop == 1 ]] && log "WARNING: a loop exited with an error (see above)"

if [[ $NEP == 3 ]]; then
  wait_node3 || log "WARNING: node 3 does not answer; restores through it will fail"
fi
export CAIRN_CACHE_DIR=$work/cache/final
t1=$(now_us); rc=0
cairn 0 -- check --read-data >"$logs/check.out" 2>"$logs/check.err" || rc=$?
printf '%s\t%s\n' "$rc" "$(( $(now_us) - t1 ))" >"$res/check.tsv"
log "check --read-data: exit $rc"
cairn 0 -- snapshots --json >"$res/snapshots.json" 2>"$logs/snapshots.err" || log "snapshots --json failed"
# size of the repository's index at the end: files cairn lists, and objects/bytes under index/
nidx=""
if idx=$(cairn 0 -- list index 2>"$logs/list-index.err"); then nidx=$(grep -c . <<<"$idx" || true); fi
if [[ $BACKEND == local ]]; then isz=$(helper index-size "$(repo_at)" 2>>"$logs/list-index.err" || true)
else isz=$(helper index-size "${EP[0]}" "$S3_BUCKET" stress 2>>"$logs/list-index.err" || true); fi
printf '%s\t%s\n' "${nidx:-}" "${isz:-$'\t'}" >"$res/repo-index.tsv"
log "repository index at the end: ${nidx:-?} files listed; objects/bytes: ${isz/$'\t'/ / }"

i=0
jq -r '.[] | "\(.id)\t\(.hostname)"' "$res/snapshots.json" 2>/dev/null | while IFS=$'\t' read -r sid host; do
  m=$work/saved/$host/$sid.manifest
  if [[ ! -f $m ]]; then printf '%s\t%s\tno-copy\t0\n' "$sid" "$host" >>"$res/verify.tsv"; continue; fi
  k=${host#node}; tgt=$work/restore/$sid; t1=$(now_us)
  # restores go round-robin through every node (node 3 included after its restart)
  if cairn $((i % NEP)) -- restore "$sid" --target "$tgt" >/dev/null 2>"$logs/restore-$sid.err"; then
    if diff <(helper manifest "$tgt$work/src/w$k") "$m" >"$logs/verify-$sid.diff"; then
      st=ok; rm -f "$logs/verify-$sid.diff" "$logs/restore-$sid.err"
    else st=mismatch; fi
  else st=restore-failed; fi
  printf '%s\t%s\t%s\t%s\n' "$sid" "$host" "$st" "$(( $(now_us) - t1 ))" >>"$res/verify.tsv"
  rm -rf "$tgt"; i=$((i + 1))
done
log "restores done"

cfg=$(printf '{"backend":"%s","writers":%d,"duration":%d,"restart":%s,"cairn":"%s"}' \
  "$BACKEND" "$WRITERS" "$DURATION" "$([[ $RESTART == 1 ]] && echo true || echo false)" "$CAIRN")
rc=0
helper summary "$work" "$cfg" "$JSON_OUT" || rc=$?
[[ $failed_loop == 1 ]] && rc=1
log "total $((SECONDS - t0)) s"
exit "$rc"
