#!/usr/bin/python3
"""Checks deploy/ without the systems it is for (no Grafana or Kubernetes here).

Grafana dashboard: what Grafana's import (POST /api/dashboards/db, or the "Import dashboard"
page) requires and what makes a dashboard render: a JSON object with a title, a uid of at most
40 characters from [A-Za-z0-9_-], an integer schemaVersion, "id": null; panels with unique integer
ids, a known type, a gridPos inside the 24-column grid and not overlapping another panel; every
query panel on the dashboard's Prometheus datasource variable with targets that have unique
refIds and a non-empty PromQL expression; every $variable used declared in templating.
Prometheus: the scrape configs and alert rules pass `promtool check` (when promtool is
installed; the Kubernetes one only parses, as Debian's promtool lacks Kubernetes discovery). Kubernetes: every manifest parses and has apiVersion, kind and metadata.name.

Usage: check_deploy.py DEPLOY_DIR. Prints one line per problem; exit status 1 if any.
"""
import json
import pathlib
import re
import shutil
import subprocess
import sys

import yaml

PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline",
               "heatmap", "text", "piechart", "barchart", "histogram", "status-history"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__name", "__all"}


def check_dashboard(path):
    problems = []
    d = json.loads(path.read_text())
    where = path.name
    if not isinstance(d, dict):
        return [f"{where}: not a JSON object"]
    if not d.get("title"):
        problems.append(f"{where}: no title")
    uid = d.get("uid", "")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid or ""):
        problems.append(f"{where}: uid {uid!r} is not 1-40 characters of [A-Za-z0-9_-]")
    if d.get("id") is not None:
        problems.append(f"{where}: id must be null for import, got {d.get('id')!r}")
    if not isinstance(d.get("schemaVersion"), int):
        problems.append(f"{where}: schemaVersion must be an integer")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    datasource_vars = {n for n, v in variables.items() if v.get("type") == "datasource"}
    panels = d.get("panels")
    if not isinstance(panels, list) or not panels:
        return problems + [f"{where}: no panels"]
    ids = set()
    cells = {}
    for p in panels:
        name = f"{where}: panel {p.get('id')!r} ({p.get('title', '')!r})"
        if not isinstance(p.get("id"), int) or p["id"] in ids:
            problems.append(f"{name}: id missing, not an integer, or repeated")
        ids.add(p.get("id"))
        if p.get("type") not in PANEL_TYPES:
            problems.append(f"{name}: unknown panel type {p.get('type')!r}")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{name}: gridPos needs integer x, y, w, h")
            continue
        if g["x"] < 0 or g["y"] < 0 or g["w"] < 1 or g["h"] < 1 or g["x"] + g["w"] > 24:
            problems.append(f"{name}: gridPos {g} is outside the 24-column grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"{name}: overlaps panel {cells[(x, y)]} at ({x}, {y})")
                    break
                cells[(x, y)] = p.get("id")
            else:
                continue
            break
        if p.get("type") in ("row", "text"):
            continue
        ds = p.get("datasource", {})
        if ds.get("type") != "prometheus" or ds.get("uid", "").strip("${}") not in datasource_vars:
            problems.append(f"{name}: datasource {ds} is not the dashboard's Prometheus variable")
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"{name}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problems.append(f"{name}: refIds {refs} missing or repeated")
        for t in targets:
            expr = t.get("expr", "")
            if not expr.strip():
                problems.append(f"{name}: target {t.get('refId')} has no expression")
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                problems.append(f"{name}: unbalanced brackets in {expr!r}")
            for var in re.findall(r"\$(\w+)", expr):
                if var not in variables and var not in BUILTIN_VARIABLES:
                    problems.append(f"{name}: ${var} is not a dashboard variable")
    return problems


def check_prometheus(directory):
    problems = []
    promtool = shutil.which("promtool")
    for path in sorted(directory.glob("*.yml")):
        yaml.safe_load(path.read_text())
        # Debian's promtool has no Kubernetes service discovery: YAML only for that config.
        if promtool is None or "kubernetes_sd_configs" in path.read_text():
            continue
        kind = "rules" if "groups:" in path.read_text() else "config"
        # The scrape config names the rule file relative to /etc/prometheus; check the rules
        # separately and the config with --syntax-only.
        args = [promtool, "check", kind] + (["--syntax-only"] if kind == "config" else []) + [str(path)]
        run = subprocess.run(args, capture_output=True, text=True)
        if run.returncode != 0:
            problems.append(f"{path.name}: promtool check {kind}: {run.stdout}{run.stderr}".strip())
    return problems


def check_k8s(directory):
    problems = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            if path.name == "kustomization.yaml":
                if not doc.get("resources"):
                    problems.append(f"{path.name}: no resources")
                continue
            for key in ("apiVersion", "kind"):
                if not doc.get(key):
                    problems.append(f"{path.name}: a document without {key}")
            if not doc.get("metadata", {}).get("name"):
                problems.append(f"{path.name}: a {doc.get('kind')} without metadata.name")
    return problems


def main():
    if len(sys.argv) != 2:
        print("usage: check_deploy.py DEPLOY_DIR", file=sys.stderr)
        return 2
    deploy = pathlib.Path(sys.argv[1])
    problems = []
    dashboards = sorted((deploy / "grafana").glob("*.json"))
    if not dashboards:
        problems.append("no Grafana dashboard in grafana/")
    for path in dashboards:
        problems += check_dashboard(path)
    for path in sorted((deploy / "grafana" / "provisioning").rglob("*.yaml")):
        yaml.safe_load(path.read_text())
    problems += check_prometheus(deploy / "prometheus")
    problems += check_k8s(deploy / "k8s")
    for p in problems:
        print(p)
    print(f"check_deploy: {len(dashboards)} dashboard(s), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
