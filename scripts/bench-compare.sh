#!/usr/bin/env bash
# bench-compare.sh: cairn vs restic, side by side on the same data.
#
# Builds cairn (release), prepares data sets under a work dir, then for R repetitions runs,
# alternating which tool goes first: first backup (fresh repos), unchanged re-backup, backup
# after touching 1 % of the files, restore into an empty dir (plus a `cp -a` of the data set
# into an empty dir as a reference), forget --keep-last 1 --prune (cairn: only when it has
# `forget`), check, and measures wall time and peak RSS of every phase (GNU time), CPU and
# repository size. Prints medians and cairn/restic (and cairn/cp -a) ratios as a markdown
# table and writes it to a file.
#
# The machine is noisy: only compare ratios measured in one run.
#
# Usage: scripts/bench-compare.sh [options]
#   --data LIST          comma-separated: real, k3s, incompressible, bigfile, files:N, speedup
#                        (default: real). files:N = N small text files (50 B .. 16 KiB, median
#                        1.5 KB) in a nested tree, like a volume or a source checkout
#                        (e.g. files:1000000; cached in WORK/data/files-N).
#                        speedup = cairn alone on the bigfile with RAYON_NUM_THREADS=1 vs 2
#   --seed S             seed of the files:N data set (default 1)
#   --work DIR           work dir (default /var/tmp/cairn-bench)
#   --reps R             repetitions (default 3)
#   --threads N          RAYON_NUM_THREADS=N for cairn, GOMAXPROCS=N for restic
#   --real-tree-mb N     size of the `real` tree copy (default 2000)
#   --mixed-mb N         size of the `real` mixed file (default 1000)
#   --incompressible-mb N  (default 1000)
#   --bigfile-mb N       (default 4000)
#   --speedup-threads "A B"  thread counts for --data speedup (default "1 2")
#   --pct P              percent of files touched for the "1 %" backup (default 1)
#   --no-cp              skip the `cp -a` reference in the restore phase
#   --zstd-ref "L1 L2"   zstd levels of the first-backup references (default "1 2"; "" = none):
#                        after both first backups, `tar -cf - DATA | zstd -L -T<threads>`
#                        is timed (zstd's own tool reading and compressing every byte once as
#                        one stream, nothing else), its output size beside each tool's
#                        repository after the first backup; and once per data set zstd's
#                        in-memory benchmark (`zstd -b`) gives the compression stage alone:
#                        its speed on one core and the wall time that implies on every core,
#                        a floor under any backup compressing at that level
#   --s3                 repositories in the S3 bucket the environment names (AWS_ENDPOINT_URL,
#                        S3_BUCKET, AWS_* credentials; e.g. eval "$(scripts/s3-server.sh up)"),
#                        a fresh prefix per tool and repetition; cairn runs with -v and its
#                        request counts per phase are recorded; repository sizes are n/a
#   --no-build           do not run cargo; use target/release/cairn as it is
#   --cairn-bin PATH     benchmark this binary (implies --no-build)
#   --out FILE           also append the tables to FILE (default WORK/results/<data>-<time>.md)
#   --regen              regenerate the data sets even if they exist
#   --prepare-only       only build and prepare the data sets
#   --restore-fs loop|dir  where restores (and cp -a) go: loop (default when running as root
#                        with loop devices) = a fresh ext4 file system per restore on a sparse
#                        image under WORK/tmp, so no run pays for the previous one's deleted
#                        inodes; dir = plain directories
#   -h, --help

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
HELPER="$SCRIPT_DIR/bench_helper.py"

DATA="real"
WORK="/var/tmp/cairn-bench"
REPS=3
THREADS=""
REAL_TREE_MB=2000
MIXED_MB=1000
INCOMP_MB=1000
BIG_MB=4000
SPEEDUP_THREADS="1 2"
PCT=1
SEED=1
CP_REF=1
ZREF_LEVELS="1 2"
BUILD=1
CAIRN_BIN_SRC=""
OUT=""
REGEN=0
PREPARE_ONLY=0
RESTORE_FS=""
S3=0
SHARED="${CAIRN_BENCH_SHARED:-/work/shared}"

usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) DATA="$2"; shift 2 ;;
        --s3) S3=1; shift ;;
        --work) WORK="$2"; shift 2 ;;
        --reps) REPS="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --real-tree-mb) REAL_TREE_MB="$2"; shift 2 ;;
        --mixed-mb) MIXED_MB="$2"; shift 2 ;;
        --incompressible-mb) INCOMP_MB="$2"; shift 2 ;;
        --bigfile-mb) BIG_MB="$2"; shift 2 ;;
        --speedup-threads) SPEEDUP_THREADS="$2"; shift 2 ;;
        --pct) PCT="$2"; shift 2 ;;
        --seed) SEED="$2"; shift 2 ;;
        --no-cp) CP_REF=0; shift ;;
        --zstd-ref) ZREF_LEVELS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --cairn-bin) CAIRN_BIN_SRC="$2"; BUILD=0; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --regen) REGEN=1; shift ;;
        --prepare-only) PREPARE_ONLY=1; shift ;;
        --restore-fs) RESTORE_FS="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [[ -z "$RESTORE_FS" ]]; then
    if [[ "$(id -u)" == 0 ]] && command -v mkfs.ext4 >/dev/null && losetup -f >/dev/null 2>&1; then
        RESTORE_FS=loop
    else
        RESTORE_FS=dir
    fi
fi
[[ "$RESTORE_FS" == loop || "$RESTORE_FS" == dir ]] || { echo "--restore-fs: loop or dir" >&2; exit 2; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

IFS=',' read -r -a SETS <<<"$DATA"
for s in "${SETS[@]}"; do   # fail now, not after hours of the sets before a typo
    [[ "$s" =~ ^(real|k3s|incompressible|bigfile|speedup|files:[1-9][0-9]*)$ ]] ||
        die "unknown data set '$s' (real, k3s, incompressible, bigfile, files:N, speedup)"
done
[[ "$SEED" =~ ^[0-9]+$ ]] || die "--seed needs a non-negative integer, got '$SEED'"
for l in $ZREF_LEVELS; do
    [[ "$l" =~ ^([1-9]|1[0-9])$ ]] || die "--zstd-ref takes zstd levels 1-19, got '$l'"
done

# ---------------------------------------------------------------- prerequisites
if [[ ! -x /usr/bin/time ]]; then
    log "/usr/bin/time missing: installing GNU time"
    apt-get install -y time >/dev/null || die "cannot install GNU time (apt-get install -y time)"
fi
command -v restic >/dev/null || die "restic not found"
command -v python3 >/dev/null || die "python3 not found"
if [[ -n "$ZREF_LEVELS" ]] && ! command -v zstd >/dev/null; then
    log "zstd missing (needed for the first-backup references): installing it"
    apt-get install -y zstd >/dev/null || die "cannot install zstd (apt-get install -y zstd), or pass --zstd-ref ''"
fi

mkdir -p "$WORK"/{bin,data,repos,restore,results,tmp}
WORK="$(cd "$WORK" && pwd)"
STAMP="$(date +%Y%m%d-%H%M%S)"
RUN_DIR="$WORK/results/run-$STAMP"
mkdir -p "$RUN_DIR"
[[ -n "$OUT" ]] || OUT="$WORK/results/${DATA//[,:]/-}-$STAMP.md"
CMDLOG="$RUN_DIR/commands.log"
: >"$CMDLOG"

# ---------------------------------------------------------------- cairn binary
CAIRN="$WORK/bin/cairn"
if [[ -n "$CAIRN_BIN_SRC" ]]; then
    cp -p "$CAIRN_BIN_SRC" "$CAIRN.new"
else
    if [[ "$BUILD" == 1 ]]; then
        log "building cairn (cargo build --release -p cairn-cli)"
        if ! (cd "$REPO_ROOT" && cargo build --release -p cairn-cli) >&2; then
            [[ -x "$REPO_ROOT/target/release/cairn" ]] || die "cargo build failed"
            log "WARNING: cargo build failed; benchmarking the existing target/release/cairn" \
                "(built $(date -r "$REPO_ROOT/target/release/cairn" '+%F %T')); pass --no-build to silence"
            BUILD_FAILED=1
        fi
    fi
    [[ -x "$REPO_ROOT/target/release/cairn" ]] || die "no $REPO_ROOT/target/release/cairn"
    cp -p "$REPO_ROOT/target/release/cairn" "$CAIRN.new"
fi
# A private copy: the binary in target/ may be rebuilt by others while we measure.
mv -f "$CAIRN.new" "$CAIRN"
chmod +x "$CAIRN"

BUILD_FAILED="${BUILD_FAILED:-0}"
PASSWORD="cairn-bench-password"
CAIRN_HAS_FORGET=0
CAIRN_FORGET_MODE=""
if "$CAIRN" help forget >/dev/null 2>&1; then
    CAIRN_HAS_FORGET=1
    if "$CAIRN" help forget 2>/dev/null | grep -q -- '--prune'; then
        CAIRN_FORGET_MODE="forget-prune"
    elif "$CAIRN" help prune >/dev/null 2>&1; then
        CAIRN_FORGET_MODE="forget-then-prune"
    else
        CAIRN_FORGET_MODE="forget-only"
    fi
fi

# Environment of each tool (threads apply to both).
cairn_env=(env "CAIRN_PASSWORD=$PASSWORD" "CAIRN_CACHE_DIR=$WORK/cairn-cache")
if [[ "$S3" == 1 ]]; then
    [[ -n "${AWS_ENDPOINT_URL:-}" && -n "${S3_BUCKET:-}" ]] || die "--s3 needs AWS_ENDPOINT_URL and S3_BUCKET (eval \"\$(scripts/s3-server.sh up)\")"
    # -v: cairn logs its S3 request counts at exit.
    cairn_env+=("CAIRN_LOG=warn,cairn_engine::backend::s3=info")
fi
restic_env=(env "RESTIC_PASSWORD=$PASSWORD" "RESTIC_CACHE_DIR=$WORK/restic-cache")
if [[ -n "$THREADS" ]]; then
    cairn_env+=("RAYON_NUM_THREADS=$THREADS")
    restic_env+=("GOMAXPROCS=$THREADS")
fi

ZREF_THREADS="${THREADS:-$(nproc)}"

# ---------------------------------------------------------------- header
CAIRN_VERSION="$("$CAIRN" --version 2>&1 | head -1)"
RESTIC_VERSION="$(restic version 2>&1 | head -1)"
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
{
    echo "## cairn vs restic ($STAMP)"
    echo
    echo "- cairn: \`$CAIRN_VERSION\` (private copy $CAIRN, sha256 $(sha256sum "$CAIRN" | cut -c1-16)…, binary built $(date -r "$CAIRN" '+%F %T'); source $REPO_ROOT)"
    [[ "$BUILD_FAILED" == 1 ]] && echo "- **WARNING: cargo build failed; this is an older binary**"
    if git -C "$REPO_ROOT" rev-parse --short HEAD >/dev/null 2>&1; then
        echo "- source tree: git HEAD $(git -C "$REPO_ROOT" rev-parse --short HEAD)," \
            "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no | wc -l) modified tracked file(s) at run time"
    fi
    echo "- restic: \`$RESTIC_VERSION\`"
    echo "- nproc: $(nproc); CPU: $CPU_MODEL; RAM: $(free -g | awk '/Mem:/{print $2}') GiB; kernel $(uname -r)"
    echo "- threads: ${THREADS:-default (cairn: rayon = nproc; restic: GOMAXPROCS = nproc)}"
    echo "- repetitions: $REPS, tools alternate which goes first in each phase; medians reported"
    echo "- page cache: NOT dropped (cannot be done reliably here). Each data set is read once before"
    echo "  the first timed run, so both tools read from a warm cache; \`sync\` (untimed) runs before"
    echo "  every timed command so that one tool's dirty pages are not flushed on the other's clock."
    echo "- cairn forget/prune: $([[ $CAIRN_HAS_FORGET == 1 ]] && echo "present ($CAIRN_FORGET_MODE)" || echo "absent (n/a)")"
    echo "- check: \`cairn check\` and \`restic check\` (both without --read-data; restic with its"
    echo "  default fresh temporary cache), after forget+prune"
    [[ "$CP_REF" == 1 ]] && echo "- cp -a: \`cp -a DATA/. EMPTY_DIR\` (same state as the restores), timed after both restores"
    [[ -n "$ZREF_LEVELS" ]] && echo "- first-backup references: \`tar -cf - -C DATA . | zstd -L -T$ZREF_THREADS -c | wc -c\` for L in $ZREF_LEVELS ($(zstd --version 2>&1 | head -1)), timed after both first backups"
    echo "- restore targets: $([[ "$RESTORE_FS" == loop ]] && echo "a fresh ext4 file system per restore (loop-mounted sparse image, inode tables initialised before timing)" || echo "plain directories, deleted after all restores of a repetition ran")"
    echo "- MB = 10^6 bytes; MiB = 2^20 bytes; RSS = GNU time %M (max resident set); CPU = %U + %S;
  \"cores busy\" = CPU / wall (other load on the machine lowers it for both tools)"
    echo
} | tee -a "$OUT"

# ---------------------------------------------------------------- helpers
CSV=""
record() { echo "$1,$2,$3,$4" >>"$CSV"; }   # rep tool measurement value

# timed REP TOOL LABEL OUTFILE -- command...  → sets T_WALL T_USER T_SYS T_RSS (KiB) T_VCSW
# (voluntary context switches: blocking on I/O, fsync, locks) T_RC
timed() {
    local rep="$1" tool="$2" label="$3" outfile="$4"
    shift 5
    local tf="$RUN_DIR/time.$$"
    sync
    printf '%s\t%s\t%s\n' "$tool" "$label" "$(printf '%q ' "$@")" >>"$CMDLOG"
    set +e
    /usr/bin/time -f '%e %U %S %M %w' -o "$tf" "$@" >"$outfile" 2>"$outfile.err"
    T_RC=$?
    set -e
    read -r T_WALL T_USER T_SYS T_RSS T_VCSW < <(python3 "$HELPER" parse-time "$tf")
    rm -f "$tf"
    if [[ "$T_RC" != 0 && "$T_RC" != 3 ]]; then
        log "WARNING: $tool $label exited with $T_RC; stderr tail:"
        tail -5 "$outfile.err" >&2 || true
        T_WALL=nan; T_USER=nan; T_SYS=nan; T_RSS=nan; T_VCSW=nan
    elif [[ "$T_RC" == 3 ]]; then
        log "note: $tool $label exited 3 (some files could not be read)"
    fi
    log "  rep $rep $tool $label: ${T_WALL}s wall, ${T_USER}+${T_SYS}s cpu, $((${T_RSS/nan/0} / 1024)) MiB rss"
}

calc() { python3 -c "import sys; a=[float(x) for x in sys.argv[1:]]; print($1)" "${@:2}" 2>/dev/null || echo nan; }

repo_bytes() {
    if [[ "$1" == s3:* ]]; then echo nan; else python3 "$HELPER" stats "$1" | awk '{print $2}'; fi
}

# Where a tool's repository lives in repetition $2 of data set $3.
repo_of() { # tool rep name
    if [[ "$S3" == 1 ]]; then
        echo "s3:${AWS_ENDPOINT_URL%/}/$S3_BUCKET/cairn-bench-$STAMP-$3-$2-$1"
    else
        echo "$WORK/repos/$1"
    fi
}

# Requests cairn logged in a run's stderr ("s3 requests: 12 PUT, …"), as "PUT+GET+…=total".
s3_requests() {
    python3 - "$1" <<'PY' 2>/dev/null || echo nan
import re, sys
m = re.findall(r"s3 requests: (\d+) PUT, (\d+) GET, (\d+) HEAD, (\d+) LIST, (\d+) DELETE", open(sys.argv[1], errors="replace").read())
print(sum(int(x) for x in m[-1]) if m else "nan")
PY
}

tool_init() { # tool repo
    local tool="$1" repo="$2"
    [[ "$repo" == s3:* ]] || rm -rf "$repo"
    # Both tools with their default password KDF (cairn: Argon2id 64 MiB x 3, ~0.1 s here;
    # restic 0.14: scrypt calibrated at init, N=32768 r=8 p=6 on this machine): every command
    # pays it once, which matters for the short ones (unchanged re-backup, prune).
    if [[ "$tool" == cairn ]]; then
        printf '%s\t%s\t%s\n' cairn init "$(printf '%q ' "${cairn_env[@]}" "$CAIRN" -r "$repo" init)" >>"$CMDLOG"
        "${cairn_env[@]}" "$CAIRN" -r "$repo" init >/dev/null
    else
        printf '%s\t%s\t%s\n' restic init "$(printf '%q ' "${restic_env[@]}" restic -r "$repo" init)" >>"$CMDLOG"
        "${restic_env[@]}" restic -r "$repo" init >/dev/null
    fi
}

tool_cmd() { # tool repo subcommand... → prints nothing; fills CMD array
    local tool="$1" repo="$2"
    shift 2
    if [[ "$tool" == cairn ]]; then
        CMD=("${cairn_env[@]}" "$CAIRN" -r "$repo" "$@")
    else
        CMD=("${restic_env[@]}" restic -r "$repo" "$@")
    fi
}

# fresh_target DIR FILES BYTES: an empty restore target. With --restore-fs loop, a new ext4
# file system on a sparse image (inode tables written now, not lazily during the timed
# run; enough inodes for FILES), mounted at DIR; else an empty directory.
fresh_target() {
    local dir="$1" files="$2" bytes="$3"
    release_target "$dir"
    mkdir -p "$dir"
    [[ "$RESTORE_FS" == loop ]] || return 0
    local img="$WORK/tmp/$(basename "$dir").img"
    rm -f "$img"
    truncate -s $((bytes * 2 + files * 8192 + (1 << 30))) "$img"
    mkfs.ext4 -q -F -N $((files * 11 / 10 + 10000)) \
        -E lazy_itable_init=0,lazy_journal_init=0 "$img" >/dev/null
    mount -o loop "$img" "$dir"
}

release_target() {
    local dir="$1"
    if mountpoint -q "$dir" 2>/dev/null; then
        umount "$dir"
    fi
    rm -f "$WORK/tmp/$(basename "$dir").img"
    rm -rf "$dir"
}

warm_cache() {
    log "warming the page cache: reading $1 once"
    find "$1" -type f -print0 | xargs -0 -r cat >/dev/null
}

# ---------------------------------------------------------------- data sets
# Sources of the "mixed" files, in order (each file is used once; see bench_helper.py mixed).
SRC_MIXED=(/opt /usr/bin /usr/sbin /usr/libexec /usr/share /usr/lib)

prepared() { # name params → 0 if already prepared with these params
    [[ "$REGEN" == 0 && -f "$WORK/data/$1.params" && "$(cat "$WORK/data/$1.params")" == "$2" ]]
}

prep_real() {
    local params="tree=$REAL_TREE_MB mixed=$MIXED_MB v2"
    DATA_PATH="$WORK/data/real"
    prepared real "$params" && return
    log "preparing data set 'real': ${REAL_TREE_MB} MB tree (cp -a) + ${MIXED_MB} MB mixed file"
    rm -rf "$DATA_PATH" "$WORK/data/real.params"
    mkdir -p "$DATA_PATH"
    local tc="" d
    for d in /root/.rustup/toolchains/stable-* /root/.rustup/toolchains/*; do
        if [[ -d "$d" && ! -L "$d" ]]; then tc="$d"; break; fi
    done
    python3 "$HELPER" copy-capped "$DATA_PATH/tree" $((REAL_TREE_MB * 1000000)) \
        /usr/share/doc:0.06 /usr/share/man:0.04 /usr/lib:0.45 ${tc:+"$tc"} >/dev/null
    python3 "$HELPER" mixed "$DATA_PATH/mixed.bin" $((MIXED_MB * 1000000)) 1 "${SRC_MIXED[@]}" >/dev/null
    echo "$params" >"$WORK/data/real.params"
}

prep_k3s() {
    local params="k3s days=1 seed=1 scale=medium v1"
    DATA_PATH="$WORK/data/k3s/day-01"
    prepared k3s "$params" && return
    log "preparing data set 'k3s': python3 $SHARED/datasets/k3s-sim.py $WORK/data/k3s --days 1 --seed 1 --scale medium"
    rm -rf "$WORK/data/k3s" "$WORK/data/k3s.params"
    python3 "$SHARED/datasets/k3s-sim.py" "$WORK/data/k3s" --days 1 --seed 1 --scale medium --quiet >&2
    echo "$params" >"$WORK/data/k3s.params"
}

prep_incompressible() {
    local params="urandom mb=$INCOMP_MB v1"
    DATA_PATH="$WORK/data/incompressible"
    prepared incompressible "$params" && return
    log "preparing data set 'incompressible': ${INCOMP_MB} MB from /dev/urandom"
    rm -rf "$DATA_PATH"
    mkdir -p "$DATA_PATH"
    head -c $((INCOMP_MB * 1000000)) /dev/urandom >"$DATA_PATH/random.bin"
    echo "$params" >"$WORK/data/incompressible.params"
}

prep_bigfile() {
    local params="mixed mb=$BIG_MB v1"
    DATA_PATH="$WORK/data/bigfile"
    prepared bigfile "$params" && return
    log "preparing data set 'bigfile': one ${BIG_MB} MB mixed file"
    rm -rf "$DATA_PATH"
    mkdir -p "$DATA_PATH"
    python3 "$HELPER" mixed "$DATA_PATH/big.bin" $((BIG_MB * 1000000)) 2 "${SRC_MIXED[@]}" >/dev/null
    echo "$params" >"$WORK/data/bigfile.params"
}

prep_files() { # N
    local n="$1"
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "files:N needs a positive integer N, got '$n'"
    local params="files n=$n seed=$SEED v1"
    DATA_PATH="$WORK/data/files-$n"
    prepared "files-$n" "$params" && return
    log "preparing data set 'files:$n': $n small files, seed $SEED"
    rm -rf "$DATA_PATH" "$WORK/data/files-$n.params"
    python3 "$HELPER" files "$DATA_PATH" "$n" "$SEED" >/dev/null
    echo "$params" >"$WORK/data/files-$n.params"
}

# prep_set SET: prepare a data set of --data (sets DATA_PATH).
prep_set() {
    case "$1" in
        speedup) prep_bigfile ;;
        files:*) prep_files "${1#files:}" ;;
        real|k3s|incompressible|bigfile) "prep_$1" ;;
        *) die "unknown data set $1 (real, k3s, incompressible, bigfile, files:N, speedup)" ;;
    esac
}

# ---------------------------------------------------------------- one comparison
# The compression stage by itself: zstd's in-memory benchmark (`zstd -b`, one core, 1 MiB
# blocks) on every byte of the data set, once per level, recorded as tool "zstd-L" with rep 1.
# With the tar | zstd runs of each repetition it bounds what any zstd-compressing backup
# can reach here: the data set / (this speed x cores) is the wall time of compressing alone.
# Skipped when the data set would not fit in memory three times over (zstd holds it whole).
compression_alone() { # data bytes
    [[ -n "$ZREF_LEVELS" ]] || return 0
    local avail
    # Multiplied in bash: awk prints a product this large as 2.46e+10 (and mawk's %d stops
    # at 2^31 - 1).
    avail="$(awk '/MemAvailable/{print $2}' /proc/meminfo)"
    avail=$((avail * 1024))
    if (( $2 * 7 / 2 > avail )); then
        log "compression alone: skipped (the data set does not fit in memory three times over)"
        return 0
    fi
    for l in $ZREF_LEVELS; do
        local out="$RUN_DIR/zstd-bench-$l.txt"
        printf '%s\t%s\t%s\n' "zstd-$l" "compression alone" "zstd -b$l -B1M -i1 -r $1" >>"$CMDLOG"
        zstd -b"$l" -B1M -i1 -r "$1" 2>&1 | tr '\r' '\n' | grep 'MB/s, ' | tail -1 >"$out" || true
        # " 1#71237 files : 2840941909 -> 922446919 (x3.080),  282.8 MB/s,  732.8 MB/s"
        local speed bytes
        read -r bytes speed < <(sed -E 's/.*: *([0-9]+) *-> *[0-9]+ *\(x[0-9.]+\), *([0-9.]+) MB\/s.*/\1 \2/' "$out")
        if [[ "$speed" =~ ^[0-9.]+$ && "$bytes" =~ ^[0-9]+$ ]]; then
            log "compression alone, zstd -$l: $speed MB/s on one core ($bytes bytes)"
            record 1 "zstd-$l" "compression alone: MB/s on one core" "$speed"
            record 1 "zstd-$l" "compression alone: wall s on every core" \
                "$(calc 'a[0]/1e6/a[1]/a[2]' "$bytes" "$speed" "$ZREF_THREADS")"
        else
            log "WARNING: could not read zstd -b$l's result: $(cat "$out")"
        fi
    done
}

compare() { # set (name in file names: ':' -> '-')
    local name="${1//:/-}"
    prep_set "$1"
    local data="$DATA_PATH"
    read -r NFILES NBYTES < <(python3 "$HELPER" stats "$data")
    local mb
    mb="$(calc 'a[0]/1e6' "$NBYTES")"
    log "data set $name: $data, $NFILES files, $mb MB"
    CSV="$RUN_DIR/$name.csv"
    : >"$CSV"
    warm_cache "$data"
    local t0=$SECONDS
    compression_alone "$data" "$NBYTES"
    for ((rep = 1; rep <= REPS; rep++)); do
        local order=(cairn restic)
        ((rep % 2 == 0)) && order=(restic cairn)
        log "== $name rep $rep/$REPS (order: ${order[*]})"
        declare -A REPO=()
        for t in "${order[@]}"; do REPO[$t]="$(repo_of "$t" "$rep" "$name")"; tool_init "$t" "${REPO[$t]}"; done
        rm -rf "$WORK/restic-cache" "$WORK/cairn-cache"

        # 1. first backup
        for t in "${order[@]}"; do
            tool_cmd "$t" "${REPO[$t]}" backup --json "$data"
            timed "$rep" "$t" "first backup" "$RUN_DIR/$name.$rep.$t.backup1.json" -- "${CMD[@]}"
            record "$rep" "$t" "first backup: wall s" "$T_WALL"
            record "$rep" "$t" "first backup: peak RSS MiB" "$(calc 'a[0]/1024' "$T_RSS")"
            record "$rep" "$t" "first backup: MB/s" "$(calc 'a[0]/1e6/a[1]' "$NBYTES" "$T_WALL")"
            record "$rep" "$t" "first backup: CPU s (user+sys)" "$(calc 'a[0]+a[1]' "$T_USER" "$T_SYS")"
            record "$rep" "$t" "first backup: cores busy (cpu/wall)" "$(calc '(a[0]+a[1])/a[2]' "$T_USER" "$T_SYS" "$T_WALL")"
            record "$rep" "$t" "first backup: voluntary context switches" "$T_VCSW"
            [[ "$S3" == 1 && "$t" == cairn ]] && record "$rep" "$t" "first backup: S3 requests" "$(s3_requests "$RUN_DIR/$name.$rep.$t.backup1.json.err")"
            record "$rep" "$t" "first backup: data_added MB (pre-compression)" \
                "$(calc 'a[0]/1e6' "$(python3 "$HELPER" data-added "$t" "$RUN_DIR/$name.$rep.$t.backup1.json")")"
            record "$rep" "$t" "first backup: stored MB" "$(calc 'a[0]/1e6' "$(repo_bytes "${REPO[$t]}")")"
        done
        # The references: reading and compressing every byte once, nothing else (see --zstd-ref).
        for l in $ZREF_LEVELS; do
            timed "$rep" "zstd-$l" "reference (tar | zstd -$l -T$ZREF_THREADS)" \
                "$RUN_DIR/$name.$rep.zstd-$l.out" -- bash -c \
                'set -o pipefail; tar -cf - -C "$1" . | zstd -q -T"$2" -"$3" -c | wc -c' _ "$data" "$ZREF_THREADS" "$l"
            record "$rep" "zstd-$l" "first backup: wall s" "$T_WALL"
            record "$rep" "zstd-$l" "first backup: CPU s (user+sys)" "$(calc 'a[0]+a[1]' "$T_USER" "$T_SYS")"
            record "$rep" "zstd-$l" "first backup: stored MB" "$(calc 'a[0]/1e6' "$(head -1 "$RUN_DIR/$name.$rep.zstd-$l.out")")"
        done
        # 2. unchanged re-backup
        for t in "${order[@]}"; do
            tool_cmd "$t" "${REPO[$t]}" backup --json "$data"
            timed "$rep" "$t" "unchanged re-backup" "$RUN_DIR/$name.$rep.$t.backup2.json" -- "${CMD[@]}"
            record "$rep" "$t" "unchanged re-backup: wall s" "$T_WALL"
            record "$rep" "$t" "unchanged re-backup: peak RSS MiB" "$(calc 'a[0]/1024' "$T_RSS")"
            [[ "$S3" == 1 && "$t" == cairn ]] && record "$rep" "$t" "unchanged re-backup: S3 requests" "$(s3_requests "$RUN_DIR/$name.$rep.$t.backup2.json.err")"
        done
        # 3. backup after touching PCT % of the files
        local undo="$WORK/tmp/undo-$name.json"
        python3 "$HELPER" undo "$undo"   # leftovers of an interrupted run
        read -r nmod ntot modbytes < <(python3 "$HELPER" modify "$data" "$undo" "$rep" "$PCT")
        log "  modified $nmod of $ntot files ($(calc 'a[0]/1e6' "$modbytes") MB of file content)"
        for t in "${order[@]}"; do
            tool_cmd "$t" "${REPO[$t]}" backup --json "$data"
            timed "$rep" "$t" "backup after ${PCT}% touched" "$RUN_DIR/$name.$rep.$t.backup3.json" -- "${CMD[@]}"
            record "$rep" "$t" "${PCT}% touched backup: wall s" "$T_WALL"
            record "$rep" "$t" "${PCT}% touched backup: peak RSS MiB" "$(calc 'a[0]/1024' "$T_RSS")"
            record "$rep" "$t" "${PCT}% touched backup: data_added MB" \
                "$(calc 'a[0]/1e6' "$(python3 "$HELPER" data-added "$t" "$RUN_DIR/$name.$rep.$t.backup3.json")")"
        done
        # 4. restore into an empty dir (the latest snapshot = the modified state), then the
        # reference: `cp -a` of the data set (same state) into an empty dir, as tool "cp-a".
        # Each goes to a fresh ext4 file system of its own (--restore-fs loop, the default
        # when loop devices work): ext4 skips inodes freed in the last minutes when
        # allocating (`recently_deleted`), so on a file system where the previous
        # repetition's restore was just deleted, a 100 000-file restore or `cp -a` took 4-7x
        # longer, all of it kernel time, and the medians measured the deletions. With
        # --restore-fs dir, restores go to plain directories deleted after all ran.
        read -r _ want_bytes < <(python3 "$HELPER" stats "$data")
        for t in "${order[@]}"; do
            local restore_dir="$WORK/restore/$t"
            fresh_target "$restore_dir" "$NFILES" "$want_bytes"
            tool_cmd "$t" "${REPO[$t]}" restore latest --target "$restore_dir"
            timed "$rep" "$t" "restore" "$RUN_DIR/$name.$rep.$t.restore.out" -- "${CMD[@]}"
            read -r got_files got_bytes < <(python3 "$HELPER" stats "$restore_dir")
            if [[ "$got_files" != "$NFILES" || "$got_bytes" != "$want_bytes" ]]; then
                log "WARNING: $t restore has $got_files files / $got_bytes bytes, expected $NFILES / $want_bytes"
            fi
            record "$rep" "$t" "restore: wall s" "$T_WALL"
            record "$rep" "$t" "restore: peak RSS MiB" "$(calc 'a[0]/1024' "$T_RSS")"
            record "$rep" "$t" "restore: MB/s" "$(calc 'a[0]/1e6/a[1]' "$want_bytes" "$T_WALL")"
            record "$rep" "$t" "restore: cores busy (cpu/wall)" "$(calc '(a[0]+a[1])/a[2]' "$T_USER" "$T_SYS" "$T_WALL")"
            [[ "$S3" == 1 && "$t" == cairn ]] && record "$rep" "$t" "restore: S3 requests" "$(s3_requests "$RUN_DIR/$name.$rep.$t.restore.out.err")"
            release_target "$restore_dir"
        done
        if [[ "$CP_REF" == 1 ]]; then
            local cp_dir="$WORK/restore/cp-a"
            fresh_target "$cp_dir" "$NFILES" "$want_bytes"
            timed "$rep" cp-a "cp -a (restore reference)" "$RUN_DIR/$name.$rep.cp-a.out" -- cp -a "$data/." "$cp_dir/"
            read -r got_files got_bytes < <(python3 "$HELPER" stats "$cp_dir")
            if [[ "$got_files" != "$NFILES" || "$got_bytes" != "$want_bytes" ]]; then
                log "WARNING: cp -a copy has $got_files files / $got_bytes bytes, expected $NFILES / $want_bytes"
            fi
            record "$rep" cp-a "restore: wall s" "$T_WALL"
            record "$rep" cp-a "restore: peak RSS MiB" "$(calc 'a[0]/1024' "$T_RSS")"
            record "$rep" cp-a "restore: MB/s" "$(calc 'a[0]/1e6/a[1]' "$want_bytes" "$T_WALL")"
            record "$rep" cp-a "restore: cores busy (cpu/wall)" "$(calc '(a[0]+a[1])/a[2]' "$T_USER" "$T_SYS" "$T_WALL")"
            release_target "$cp_dir"
        fi
        rm -rf "$WORK/restore/cairn" "$WORK/restore/restic" "$WORK/restore/cp-a"
        python3 "$HELPER" undo "$undo"
        # 5. repository size, forget + prune
        for t in "${order[@]}"; do
            record "$rep" "$t" "repo size after 3 backups MB" "$(calc 'a[0]/1e6' "$(repo_bytes "${REPO[$t]}")")"
        done
        for t in "${order[@]}"; do
            local repo="${REPO[$t]}"
            if [[ "$t" == restic ]]; then
                tool_cmd restic "$repo" forget --keep-last 1 --prune
                timed "$rep" "$t" "forget+prune" "$RUN_DIR/$name.$rep.$t.prune.out" -- "${CMD[@]}"
            elif [[ "$CAIRN_FORGET_MODE" == forget-prune ]]; then
                tool_cmd cairn "$repo" forget --keep-last 1 --prune
                timed "$rep" "$t" "forget+prune" "$RUN_DIR/$name.$rep.$t.prune.out" -- "${CMD[@]}"
            elif [[ "$CAIRN_FORGET_MODE" == forget-then-prune ]]; then
                tool_cmd cairn "$repo" forget --keep-last 1
                local c1
                c1="$(printf '%q ' "${CMD[@]}")"
                tool_cmd cairn "$repo" prune
                timed "$rep" "$t" "forget, then prune" "$RUN_DIR/$name.$rep.$t.prune.out" -- \
                    bash -c "$c1 && $(printf '%q ' "${CMD[@]}")"
            else
                continue   # no forget in this cairn: n/a
            fi
            record "$rep" "$t" "forget --keep-last 1 --prune: wall s" "$T_WALL"
            record "$rep" "$t" "forget --keep-last 1 --prune: peak RSS MiB" "$(calc 'a[0]/1024' "$T_RSS")"
            record "$rep" "$t" "repo size after prune MB" "$(calc 'a[0]/1e6' "$(repo_bytes "$repo")")"
        done
        # 6. check (structure only, no --read-data), on the pruned repositories
        for t in "${order[@]}"; do
            tool_cmd "$t" "${REPO[$t]}" check
            timed "$rep" "$t" "check" "$RUN_DIR/$name.$rep.$t.check.out" -- "${CMD[@]}"
            record "$rep" "$t" "check: wall s" "$T_WALL"
            record "$rep" "$t" "check: peak RSS MiB" "$(calc 'a[0]/1024' "$T_RSS")"
            if [[ "$S3" == 1 && "$t" == cairn ]]; then
                record "$rep" "$t" "check: S3 requests" "$(s3_requests "$RUN_DIR/$name.$rep.$t.check.out.err")"
            fi
        done
        [[ "$S3" == 1 ]] || rm -rf "$WORK/repos/cairn" "$WORK/repos/restic"
    done
    local took=$((SECONDS - t0))
    python3 "$HELPER" report "$CSV" "$OUT" \
        "data set \`$name\`: $data ($NFILES files, $mb MB), ${PCT}% touched, $REPS rep(s), took ${took}s" >/dev/null
    log "data set $name took ${took}s"
}

# ---------------------------------------------------------------- single-file chunking speed-up
speedup() {
    prep_bigfile
    local data="$DATA_PATH"
    read -r NFILES NBYTES < <(python3 "$HELPER" stats "$data")
    CSV="$RUN_DIR/speedup.csv"
    : >"$CSV"
    warm_cache "$data"
    local t0=$SECONDS
    local -a ths
    read -r -a ths <<<"$SPEEDUP_THREADS"
    for ((rep = 1; rep <= REPS; rep++)); do
        local order=("${ths[@]}")
        if ((rep % 2 == 0)); then
            order=()
            for ((i = ${#ths[@]} - 1; i >= 0; i--)); do order+=("${ths[i]}"); done
        fi
        for th in "${order[@]}"; do
            local repo="$WORK/repos/cairn-speedup"
            tool_init cairn "$repo"
            local label="RAYON_NUM_THREADS=$th"
            CMD=("${cairn_env[@]}" "RAYON_NUM_THREADS=$th" "$CAIRN" -r "$repo" backup --json "$data")
            timed "$rep" "$label" "first backup of one file" "$RUN_DIR/speedup.$rep.$th.json" -- "${CMD[@]}"
            record "$rep" "$label" "first backup: wall s" "$T_WALL"
            record "$rep" "$label" "first backup: MB/s" "$(calc 'a[0]/1e6/a[1]' "$NBYTES" "$T_WALL")"
            record "$rep" "$label" "first backup: CPU s (user+sys)" "$(calc 'a[0]+a[1]' "$T_USER" "$T_SYS")"
            record "$rep" "$label" "first backup: cores busy (cpu/wall)" "$(calc '(a[0]+a[1])/a[2]' "$T_USER" "$T_SYS" "$T_WALL")"
            record "$rep" "$label" "first backup: peak RSS MiB" "$(calc 'a[0]/1024' "$T_RSS")"
            rm -rf "$repo"
        done
    done
    local took=$((SECONDS - t0))
    python3 "$HELPER" speedup-report "$CSV" "$OUT" \
        "cairn single-file chunking speed-up: $data ($(calc 'a[0]/1e6' "$NBYTES") MB, one file), $REPS rep(s), took ${took}s" >/dev/null
    log "speedup took ${took}s"
}

# ---------------------------------------------------------------- main
if [[ "$PREPARE_ONLY" == 1 ]]; then
    for s in "${SETS[@]}"; do
        prep_set "$s"
        read -r n b < <(python3 "$HELPER" stats "$DATA_PATH")
        log "data set $s ready: $DATA_PATH ($n files, $b bytes)"
    done
    exit 0
fi
for s in "${SETS[@]}"; do
    case "$s" in
        real|k3s|incompressible|bigfile|files:*) compare "$s" ;;
        speedup) speedup ;;
        *) die "unknown data set $s (real, k3s, incompressible, bigfile, files:N, speedup)" ;;
    esac
done

{
    echo "Commands (first of each kind; every command is in $CMDLOG):"
    echo
    echo '```'
    awk -F'\t' '!seen[$1 FS $2]++ {print "# " $1 " " $2; print $3}' "$CMDLOG"
    echo '```'
    echo
} >>"$OUT"

echo
echo "================================================================ results ($OUT)"
cat "$OUT"
