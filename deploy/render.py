#!/usr/bin/env python3
"""Render the cairn chart (deploy/cairn) without a Helm binary.

The chart's templates use a small subset of Helm's template language on purpose, so that
this script renders them exactly as `helm template` does:

  {{ .Values.a.b }}           a value from values.yaml
  {{ .Values.a.b | quote }}   the same, double-quoted
  {{ .Release.Name }}         the release name (default "cairn")
  {{ .Release.Namespace }}    the namespace (default "cairn")
  {{- if .Values.x }} … {{- end }}   around a whole template file

Anything else in a template is an error, so the chart cannot drift into what this script
does not render. Usage:

  deploy/render.py [--name N] [--namespace NS] [--set a.b=v]... > out.yaml
  deploy/render.py --check    # deploy/rendered/cairn.yaml is what the chart renders
"""
import argparse
import json
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "cairn")
RENDERED = os.path.join(HERE, "rendered", "cairn.yaml")
ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")


def lookup(values, path):
    v = values
    for part in path.split("."):
        if not isinstance(v, dict) or part not in v:
            raise SystemExit(f"render: no value .Values.{path}")
        v = v[part]
    return v


def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return str(v)
    raise SystemExit(f"render: {v!r} is not a scalar")


def render_file(text, values, release):
    lines = text.splitlines(keepends=True)
    cond = re.fullmatch(r"\{\{-\s*if\s+\.Values\.([\w.]+)\s*\}\}\n?", lines[0]) if lines else None
    if cond:
        if not re.fullmatch(r"\{\{-\s*end\s*\}\}\n?", lines[-1]):
            raise SystemExit("render: a file that starts with if must end with end")
        if not lookup(values, cond.group(1)):
            return ""
        lines = lines[1:-1]

    def action(m):
        expr = m.group(1)
        parts = [p.strip() for p in expr.split("|")]
        head, pipes = parts[0], parts[1:]
        if head == ".Release.Name":
            v = release["name"]
        elif head == ".Release.Namespace":
            v = release["namespace"]
        elif head.startswith(".Values."):
            v = scalar(lookup(values, head[len(".Values."):]))
        else:
            raise SystemExit(f"render: unsupported template action {{{{ {expr} }}}}")
        for p in pipes:
            if p == "quote":
                v = json.dumps(v)
            else:
                raise SystemExit(f"render: unsupported pipe {p!r}")
        return v

    return ACTION.sub(action, "".join(lines))


def set_value(values, assignment):
    path, _, raw = assignment.partition("=")
    parts = path.split(".")
    v = values
    for p in parts[:-1]:
        v = v.setdefault(p, {})
    v[parts[-1]] = yaml.safe_load(raw)


def render(name, namespace, sets):
    with open(os.path.join(CHART, "values.yaml")) as f:
        values = yaml.safe_load(f)
    for s in sets:
        set_value(values, s)
    release = {"name": name, "namespace": namespace}
    out = []
    tdir = os.path.join(CHART, "templates")
    for fname in sorted(os.listdir(tdir)):
        if not fname.endswith(".yaml"):
            continue
        with open(os.path.join(tdir, fname)) as f:
            body = render_file(f.read(), values, release)
        if body.strip():
            out.append(f"---\n# Source: cairn/templates/{fname}\n{body}")
    text = "".join(out)
    # Every document must be YAML (the schema check is deploy/validate.sh).
    list(yaml.safe_load_all(text))
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="cairn")
    ap.add_argument("--namespace", default="cairn")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    text = render(a.name, a.namespace, a.sets)
    if a.check:
        with open(RENDERED) as f:
            if f.read() != text:
                sys.exit("render: deploy/rendered/cairn.yaml is out of date: run deploy/render.py > deploy/rendered/cairn.yaml")
        print("deploy/rendered/cairn.yaml is what the chart renders")
        return
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
