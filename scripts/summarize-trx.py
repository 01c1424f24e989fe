#!/usr/bin/env python3
"""Prints the failed tests (name and first lines of the message) and the aborted test runs (a crashed or timed-out test
host: the tests it never ran are in no counter), then one closing line 'N passed, N failed, N skipped' (with
', N runs aborted' when any was), from the TRX files of a test run. Printed last so a CI log's tail names them.
Usage: scripts/summarize-trx.py [RESULTS_DIR]  (default artifacts/test-results). Exit 1 when the directory holds no TRX file.
"""
import glob, os, sys, xml.etree.ElementTree as ET
if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
    print(__doc__)
    sys.exit(0)
if len(sys.argv) > 2 or (len(sys.argv) > 1 and sys.argv[1].startswith("-")):
    print("usage: summarize-trx.py [RESULTS_DIR]  (see --help)", file=sys.stderr)
    sys.exit(2)
d = sys.argv[1] if len(sys.argv) > 1 else "artifacts/test-results"
files = sorted(glob.glob(f"{d}/*.trx"))
if not files:
    print(f"no TRX files in {d}: the tests did not run, or wrote their results elsewhere", file=sys.stderr)
    sys.exit(1)
passed = failed = skipped = 0
failures = []
aborted = []
unreadable = 0
for f in files:
    try:
        root = ET.parse(f).getroot()
    except ET.ParseError as e:
        # A run killed while writing its TRX leaves it cut short.
        print(f"UNREADABLE {os.path.basename(f)}: {e}")
        unreadable += 1
        continue
    c = root.find(".//{*}Counters")
    if c is not None:
        passed += int(c.get("passed", 0))
        failed += int(c.get("failed", 0)) + int(c.get("error", 0)) + int(c.get("timeout", 0))
        skipped += int(c.get("notExecuted", 0))
    for r in root.findall(".//{*}UnitTestResult"):
        if r.get("outcome") in ("Failed", "Error", "Timeout"):
            msg = r.find(".//{*}ErrorInfo/{*}Message")
            text = (msg.text or "").strip() if msg is not None else ""
            failures.append((r.get("testName"), r.get("duration"), "\n      ".join(text.splitlines()[:6])[:1200]))
    # VSTest records a crashed, hung (blame) or timed-out test host as an Error RunInfo; the counters then hold only the
    # tests that finished, with no failure among them.
    for info in root.findall(".//{*}ResultSummary/{*}RunInfos/{*}RunInfo"):
        if info.get("outcome") == "Error":
            t = info.find("{*}Text")
            text = (t.text or "").strip() if t is not None else ""
            aborted.append((os.path.basename(f), "\n      ".join(text.splitlines()[:6])[:1200]))
for name, duration, text in failures:
    print(f"FAILED {name} ({duration})\n      {text}")
for name, text in aborted:
    print(f"ABORTED {name}\n      {text}")
print(f"{passed} passed, {failed} failed, {skipped} skipped" + (f", {len(aborted)} runs aborted" if aborted else "")
      + (f", {unreadable} TRX files unreadable" if unreadable else ""))
