#!/usr/bin/env python3
"""After a gate run: every metric that a Prometheus rule or a Grafana dashboard under deploy/ references must appear in
the services' real /metrics scrapes. Usage: check-emitted-metrics.py DEPLOY_DIR SCRAPE_FILE...  (exit 1 on a gap)"""
import glob, json, re, sys

if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
    print(__doc__)
    sys.exit(0)
if len(sys.argv) < 3:
    print("usage: check-emitted-metrics.py DEPLOY_DIR SCRAPE_FILE...  (see --help)", file=sys.stderr)
    sys.exit(2)
deploy, scrapes = sys.argv[1], sys.argv[2:]
emitted = set()
for f in scrapes:
    for line in open(f, encoding="utf-8"):
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{| )", line)
        if m:
            emitted.add(m.group(1))

exprs = []
for f in glob.glob(f"{deploy}/prometheus/*.yml"):
    if f.endswith("_test.yml") or f.endswith("prometheus.yml"):
        continue
    lines = open(f, encoding="utf-8").read().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest and not rest.startswith((">", "|")):
            exprs.append(rest)
            continue
        block = []
        for nxt in lines[i + 1:]:
            if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                break
            block.append(nxt)
        exprs.append("\n".join(block))
def walk(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                exprs.append(v)
            else:
                walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)
for f in glob.glob(f"{deploy}/grafana/*.json"):
    walk(json.load(open(f, encoding="utf-8")))

KEYWORDS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "by", "on", "without", "ignoring", "group_left",
            "group_right", "histogram_quantile", "and", "or", "unless", "bool", "offset", "clamp_min", "clamp_max", "abs",
            "delta", "deriv", "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "label_replace", "vector", "time",
            "absent", "topk", "bottomk", "quantile_over_time", "changes", "resets", "le", "job", "pool", "service", "instance"}
referenced = set()
for e in exprs:
    e = re.sub(r"\{[^}]*\}", "", e)          # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)         # ranges
    e = re.sub(r"\boffset\s+\d+[smhdwy]", "", e)
    e = re.sub(r"\b(by|on|without|ignoring)\s*\([^)]*\)", "", e)
    for tok in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if tok not in KEYWORDS and not re.fullmatch(r"[0-9.e]+", tok):
            referenced.add(tok)
referenced.discard("up")  # added by the Prometheus server itself, not by /metrics
missing = sorted(r for r in referenced if r not in emitted)
print(f"metrics referenced by rules/dashboards: {len(referenced)}; emitted after the gate run: {len(referenced) - len(missing)}")
for m in missing:
    print(f"  NOT EMITTED: {m}")
sys.exit(1 if missing else 0)
