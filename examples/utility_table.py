"""Print the utility metrics a certificate records as a Markdown table.

python examples/utility_table.py runs/mosei-subset/deleted/cert.json
"""

from __future__ import annotations

import sys

from mbd_cert.certificate import load_certificate

COLUMNS = ("mae", "pearson_r", "acc2_non_negative", "acc2_positive", "f1_non_negative", "acc7")


def main() -> None:
    doc = load_certificate(sys.argv[1])
    utility = doc["metrics"]["utility"]
    rows = [(f"before, {view}", values) for view, values in utility["before"].items()]
    rows += [(f"after, {view}", values) for view, values in utility["after"].items()]
    print(
        f"n = {utility.get('n')}, modality = {doc['deletion']['modality']}, "
        f"epsilon = {doc['privacy']['epsilon']}, sigma = {doc['privacy']['sigma']!r}"
    )
    print("| model | " + " | ".join(COLUMNS) + " |")
    print("| --- " * (len(COLUMNS) + 1) + "|")
    for label, values in rows:
        cells = [f"{values[c]:.4f}" if values.get(c) is not None else "n/a" for c in COLUMNS]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
