#!/usr/bin/env python3
"""Regenerate the SQLite fixtures of `pages::tests` (deterministic): `before.db` holds a
kine-like table (rows of 40 B to 9 KiB, some spilling to overflow pages); `after.db` is the
same database after deleting every third row, updating a few and running VACUUM, which
renumbers and rewrites nearly every page while most rows stay byte-identical."""
import os, random, shutil, sqlite3

here = os.path.dirname(os.path.abspath(__file__))
rnd = random.Random(7)
before, after = os.path.join(here, "before.db"), os.path.join(here, "after.db")
for p in (before, after):
    if os.path.exists(p):
        os.remove(p)
db = sqlite3.connect(before)
db.execute("PRAGMA page_size=4096")
db.execute("PRAGMA journal_mode=DELETE")
db.execute("CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, value BLOB)")
db.execute("CREATE INDEX kine_name ON kine (name)")
for i in range(70):
    size = rnd.choice([40, 120, 300, 700, 1500, 2500]) if i % 12 else 9000
    value = bytes(rnd.getrandbits(8) for _ in range(size))
    db.execute("INSERT INTO kine (name, value) VALUES (?, ?)", ("/registry/pods/ns/p%03d" % i, value))
db.commit()
db.close()
shutil.copy(before, after)
db = sqlite3.connect(after)
db.execute("DELETE FROM kine WHERE id % 3 = 0")
for i in (5, 11, 23):
    db.execute("UPDATE kine SET value = ? WHERE id = ?", (bytes(rnd.getrandbits(8) for _ in range(800)), i))
db.commit()
db.execute("VACUUM")
db.close()
