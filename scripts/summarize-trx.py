#!/usr/bin/env python3
"""Prints the failed tests (name and first lines of the message), then one closing line
'N passed, N failed, N skipped', from the TRX files of a test run. Printed last so a CI log's tail names them."""
import glob, sys, xml.etree.ElementTree as ET
d = sys.argv[1] if len(sys.argv) > 1 else "artifacts/test-results"
passed = failed = skipped = 0
failures = []
for f in sorted(glob.glob(f"{d}/*.trx")):
    root = ET.parse(f).getroot()
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
for name, duration, text in failures:
    print(f"FAILED {name} ({duration})\n      {text}")
print(f"{passed} passed, {failed} failed, {skipped} skipped")
