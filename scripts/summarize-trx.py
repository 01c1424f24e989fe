#!/usr/bin/env python3
"""Prints one closing line 'N passed, N failed, N skipped' from the TRX files of a test run."""
import glob, sys, xml.etree.ElementTree as ET
d = sys.argv[1] if len(sys.argv) > 1 else "artifacts/test-results"
passed = failed = skipped = 0
for f in glob.glob(f"{d}/*.trx"):
    c = ET.parse(f).getroot().find(".//{*}Counters")
    if c is None: continue
    passed += int(c.get("passed", 0)); failed += int(c.get("failed", 0)) + int(c.get("error", 0)) + int(c.get("timeout", 0))
    skipped += int(c.get("notExecuted", 0))
print(f"{passed} passed, {failed} failed, {skipped} skipped")
