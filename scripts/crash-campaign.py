#!/usr/bin/env python3
"""crash-campaign.py - kill -9 cairn at random moments of backups and prunes, and prove after
every kill that nothing was lost.

    scripts/crash-campaign.py DATASET_DIR [--trials 300] [--seed 1] [--work DIR] [--cairn PATH]
                              [--pack-size-mib 1] [--repo URL] [-o KEY=VALUE ...] [--json OUT]

DATASET_DIR is a k3s-sim.py series (day-01, day-02, ...: etcd snapshots, a kine state.db,
PV trees), so the runs cover what the nightly job stores: page-cut databases in groups,
content lists, big and small files. Each trial picks an operation on one repository:

- backup: the next night refreshed into one fixed source path (hard links; every file a new
  inode, as k3s-dedup-compare.py does) and backed up, alternating two --host names;
- forget: `forget --keep-last 3 --prune --max-unused 0%` (every partly used pack repacked);

runs it once to its end to learn how long it takes (the first time per operation), then
runs it again and SIGKILLs it after a delay drawn uniformly from 0 to 1.2x the duration of
the last run of that operation that ended by itself (incremental backups are faster than
the first).
After every kill:

1. `check --read-data` must exit 0: every pack, blob, tree and content list readable and
   authentic, no index entry without its pack (a crash may leave unreferenced packs, which
   check reports as such without failing, and stale locks, which it ignores);
2. the same operation, run again, must exit 0 (the repository is usable by the next run);
3. every 10th trial, and at the end, every snapshot still in the repository is restored
   and compared with the night it was taken from (contents, modes, mtimes, symlinks).

--repo puts the repository elsewhere than WORK/repo, e.g. on S3 (`eval "$(scripts/s3-server.sh
up)"` and `--repo s3:$AWS_ENDPOINT_URL/$S3_BUCKET/crash`): kills then land mid-upload too, and
in the local cache, which every command uses. `-o` passes backend options to every command
(`-o sftp.command="$CAIRN_TEST_SFTP_COMMAND"` with scripts/sshd-server.sh for `sftp:`).

Exits 1 at the first violation, with the commands' output; prints a summary (and writes it
as JSON with --json): trials, kills that landed mid-run, snapshots restored and compared.
Runtime: ~1.5 s per trial on the small scale (k3s-sim.py --scale small --days 7).
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time


def refresh(src, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=os.link, symlinks=True)


def tree_digest(root):
    """Path -> (kind, mode, mtime_ns, content digest or link target) for everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                h = hashlib.blake2b()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size, h.hexdigest())
    return out


REWRITE_PATTERN = "**/manifests"


def without_manifests(digest):
    """What a snapshot rewritten with `--exclude **/manifests` holds of a night."""
    return {k: v for k, v in digest.items() if "manifests" not in k.split(os.sep)}


class Campaign:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.days = sorted(d for d in os.listdir(args.dataset) if d.startswith("day-"))
        if not self.days:
            sys.exit(f"{args.dataset}: no day-NN directories (make them with k3s-sim.py)")
        self.work = args.work
        self.repo = args.repo or os.path.join(self.work, "repo")
        self.src = os.path.join(self.work, "src")
        self.env = dict(os.environ, CAIRN_PASSWORD="crash-campaign", CAIRN_CACHE_DIR=os.path.join(self.work, "cache"))
        self.night = 0
        self.durations = {}
        self.digests = {}  # day name -> tree_digest of that night
        self.stats = {"trials": 0, "killed_mid_run": 0, "finished_before_kill": 0,
                      "checks": 0, "restores_compared": 0, "by_op": {}}

    def cairn(self, *argv, check=True):
        cmd = [*self.base(), *argv]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if check and p.returncode != 0:
            self.fail(f"`{' '.join(cmd)}` exited {p.returncode}", p.stdout + p.stderr)
        return p

    def base(self):
        opts = [a for o in self.args.option for a in ("-o", o)]
        return [self.args.cairn, "-r", self.repo, "-q", *opts]

    def fail(self, what, output=""):
        print(f"VIOLATION after {self.stats['trials']} trials: {what}\n{output[-4000:]}", file=sys.stderr)
        self.report()
        sys.exit(1)

    def snapshots(self):
        return json.loads(self.cairn("snapshots", "--json").stdout)

    def nights(self, snaps=None):
        """The nights the repository holds, one (host, time) per snapshot (tag and rewrite keep
        both; a killed one can leave a night twice, which forget's --keep-last counts twice)."""
        return sorted((s["hostname"], s["time"]) for s in (self.snapshots() if snaps is None else snaps))

    def op_argv(self, op):
        if op == "backup":
            day = self.days[self.night % len(self.days)]
            refresh(os.path.join(self.args.dataset, day), self.src)
            host = "node-a" if self.night % 2 == 0 else "node-b"
            return ["backup", "--host", host, "--tag", day, self.src]
        if op == "forget":
            return ["forget", "--keep-last", "3", "--prune", "--max-unused", "0%"]
        if op == "tag":
            self.tag = f"t{self.stats['trials']}"
            return ["tag", "--add", self.tag]
        return ["rewrite", "--exclude", REWRITE_PATTERN, "--forget"]

    def expected_after(self, op, before):
        """The nights that must be there once `op` has run to its end, given those before."""
        if op != "forget":
            return set(before)
        keep = set()
        for host in {h for h, _ in before}:
            keep |= set(sorted((n for n in before if n[0] == host), key=lambda n: n[1])[-3:])
        return keep

    def completed(self, op, before):
        snaps = self.snapshots()
        have = set(self.nights(snaps))
        want = self.expected_after(op, before)
        if op == "backup":
            day = self.days[self.night % len(self.days)]
            self.digests.setdefault(day, tree_digest(self.src))
            self.night += 1
            # A backup that exited 0 has committed its snapshot: the newest one is this night's.
            newest = max(snaps, key=lambda s: s["time"], default=None)
            if newest is None or day not in newest.get("tags", []):
                self.fail(f"the backup of {day} exited 0 but the newest snapshot is not it", json.dumps(newest))
            have = have - {(newest["hostname"], newest["time"])}
        if have != want:
            self.fail(f"after {op} ran to its end the repository holds the wrong nights",
                      f"missing {sorted(want - have)}, unexpected {sorted(have - want)}")
        if op == "tag":
            if any(self.tag not in s.get("tags", []) for s in snaps):
                self.fail(f"tag exited 0 but a snapshot lacks {self.tag}")
            # The originals were removed: no more snapshots than before.
            if len(snaps) != len(before):
                self.fail(f"tag exited 0 but turned {len(before)} snapshots into {len(snaps)}")

    def trial(self):
        r = self.rng.random()
        op = "backup" if self.night < 2 or r < 0.55 else "forget" if r < 0.8 else "tag" if r < 0.9 else "rewrite"
        argv = self.op_argv(op)
        if op not in self.durations:
            self.run_to_end(op, argv, self.nights())
            argv = self.op_argv(op)
        delay = self.rng.uniform(0, 1.2 * self.durations[op])
        before = self.nights()
        cmd = [*self.base(), *argv]
        started = time.monotonic()
        child = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            child.wait(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            finished = False
        err = child.stderr.read().decode(errors="replace")
        child.stderr.close()
        by = self.stats["by_op"].setdefault(op, {"trials": 0, "killed": 0})
        by["trials"] += 1
        self.stats["trials"] += 1
        if finished:
            if child.returncode != 0:
                self.fail(f"{op} failed on its own (exit {child.returncode})", err)
            self.stats["finished_before_kill"] += 1
            self.durations[op] = time.monotonic() - started
            self.completed(op, before)
        else:
            self.stats["killed_mid_run"] += 1
            by["killed"] += 1
            # A killed run may have done part of its work, never lost a night it had to keep
            # (a killed tag or rewrite may leave a night twice, old and new side by side).
            lost = self.expected_after(op, before) - set(self.nights())
            if lost:
                self.fail(f"a killed {op} lost nights it had to keep: {sorted(lost)}")
        self.verify()
        # The same operation again, to its end: the next run can use what the crash left.
        if not finished:
            if op in ("tag", "rewrite"):
                # Run again over the whole repository, it also applies to the copies the
                # killed run made (a night may stay twice until a later forget); what must
                # hold is that no night went missing, and tag adds no snapshot.
                before = self.nights()
            self.run_to_end(op, argv, before)
        if self.stats["trials"] % 10 == 0:
            self.compare_restores()

    def run_to_end(self, op, argv, before):
        """Run `op` uninterrupted, remember how long it took, and check its result."""
        t = time.monotonic()
        self.cairn(*argv)
        self.durations[op] = time.monotonic() - t
        self.completed(op, before)

    def verify(self):
        p = self.cairn("check", "--read-data", check=False)
        self.stats["checks"] += 1
        if p.returncode != 0:
            self.fail(f"check --read-data exited {p.returncode} after a kill", p.stdout + p.stderr)

    def compare_restores(self):
        for snap in self.snapshots():
            day = next((t for t in snap.get("tags", []) if t in self.digests), None)
            if day is None:
                self.fail(f"snapshot {snap.get('id')} has no night tag", json.dumps(snap))
            want = self.digests[day]
            if REWRITE_PATTERN in snap.get("excludes", []):
                want = without_manifests(want)
            target = os.path.join(self.work, "restore")
            shutil.rmtree(target, ignore_errors=True)
            self.cairn("restore", snap["id"], "--target", target)
            got = tree_digest(os.path.join(target, os.path.relpath(self.src, "/")))
            if got != want:
                diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:10]
                self.fail(f"snapshot {snap['id'][:8]} ({day}) restored differently: {diff}")
            shutil.rmtree(target)
            self.stats["restores_compared"] += 1

    def report(self):
        print(json.dumps(self.stats, indent=1))
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(self.stats, f, indent=1)

    def run(self):
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        init = [*self.base(), "init", "--pack-size-mib", str(self.args.pack_size_mib)]
        p = subprocess.run(init, env=self.env, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(p.stderr)
        start = time.monotonic()
        for i in range(self.args.trials):
            self.trial()
            line = f"trial {i + 1}/{self.args.trials}, {self.stats['killed_mid_run']} killed mid-run"
            if sys.stderr.isatty():
                print(f"\r{line}", end="", file=sys.stderr)
            elif (i + 1) % 25 == 0:
                print(line, file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        self.compare_restores()
        self.stats["seconds"] = round(time.monotonic() - start, 1)
        self.report()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", default="/var/tmp/cairn-crash-campaign")
    ap.add_argument("--cairn", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "cairn"))
    ap.add_argument("--pack-size-mib", type=int, default=1)
    ap.add_argument("--repo", help="repository location (default WORK/repo); must not exist yet")
    ap.add_argument("-o", "--option", action="append", default=[], help="backend option KEY=VALUE (repeatable)")
    ap.add_argument("--json")
    Campaign(ap.parse_args()).run()


if __name__ == "__main__":
    main()
