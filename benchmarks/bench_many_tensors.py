"""Reading the certificate of a model with many tensors, against a bare JSON parse.

A mixture-of-experts checkpoint stored one expert per tensor has tens of thousands of
tensors (90,000 is about the size of the largest public ones), and the certificate
commits to each of them twice, before and after the deletion. This benchmark trains
the bundled model once (not timed), issues a deletion, then adds N synthetic entries
to both per-tensor maps and signs the certificate again with the same key. It then
times, alternately in one process:

* the verifier's certificate stages: ``load_certificate`` (strict parse and schema),
  ``check_signature`` (canonical bytes and Ed25519) and ``certificate_digest`` (the
  canonical bytes the chain walk links by), and
* the alternative: ``json.loads`` of the same bytes, the least any reader pays.

It also runs ``mbd-cert verify`` on the certificate and the released model as a user
would, and records its wall time. The model digest then fails (exit 1), because the
added tensors are not in the file, but every certificate stage runs before that.

Usage: python benchmarks/bench_many_tensors.py [--tensors 90000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, show, spread  # noqa: E402


def _grow(cert: Path, key: Path, count: int, out: Path) -> int:
    from mbd_cert import certificate, signing

    doc = json.loads(cert.read_text())
    for side in ("pre_deletion", "post_deletion"):
        tensors = doc["subject_model"][side]["tensors"]
        for i in range(count):
            tensors[f"model.layers.{i // 256}.mlp.experts.{i % 256}.down_proj.weight"] = {
                "dtype": "BF16", "shape": [7168, 2048],
                "digest": "sha256:" + hashlib.sha256(f"{side}{i}".encode()).hexdigest()}
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    signed = certificate.sign_certificate(unsigned, signing.load_private_key(key))
    out.write_bytes(certificate.dump_certificate(signed))
    return out.stat().st_size


def _stages(path: Path, public: Path) -> dict[str, float]:
    from mbd_cert import certificate, signing

    trusted = [signing.load_public_key(public)]
    times = {}
    started = time.perf_counter()
    doc = certificate.load_certificate(path)
    times["load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    certificate.check_signature(doc, trusted)
    times["signature_s"] = time.perf_counter() - started
    started = time.perf_counter()
    certificate.certificate_digest(doc)
    times["digest_s"] = time.perf_counter() - started
    times["total_s"] = times["load_s"] + times["signature_s"] + times["digest_s"]
    return times


def _bare(path: Path) -> float:
    started = time.perf_counter()
    json.loads(path.read_bytes())
    return time.perf_counter() - started


def _issue_and_grow(cli: list[str], work: Path, tensors: int) -> tuple[Path, int]:
    """Train, issue and enlarge a certificate in ``work``; return its path and size."""
    for command in (
        [*cli, "keygen", "--out", str(work / "k")],
        [*cli, "train", "--corpus", "synthetic", "--seed", "0", "--no-progress",
         "--out", str(work / "ck")],
        [*cli, "issue", "--checkpoint", str(work / "ck"), "--modality", "audio",
         "--epsilon", "1", "--key", str(work / "k.key"), "--out", str(work / "del")],
    ):
        # From the temporary directory, so that `python -m` imports the mbd_cert
        # that PYTHONPATH or the environment names, not the working tree's.
        subprocess.run(command, check=True, capture_output=True, cwd=work)
    cert = work / "big.json"
    return cert, _grow(work / "del" / "cert.json", work / "k.key", tensors, cert)


def _command_line(cli: list[str], work: Path, cert: Path) -> dict[str, Any]:
    """Time one ``mbd-cert verify`` of ``cert`` in a fresh process."""
    verify = [*cli, "verify", str(cert), str(work / "del" / "model.safetensors"),
              "--key", str(work / "k.pub")]
    started = time.perf_counter()
    done = subprocess.run(verify, capture_output=True, text=True, cwd=work)
    return {"wall_s": time.perf_counter() - started, "exit_code": done.returncode,
            "stderr_tail": done.stderr[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=90_000,
                        help="entries added to each per-tensor map [default: 90000]")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "mbd_cert.cli"]

    with tempfile.TemporaryDirectory(prefix="mbd-bench-tensors-") as tmp:
        work = Path(tmp)
        cert, size = _issue_and_grow(cli, work, args.tensors)
        runs: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            pair = [("stages", lambda: _stages(cert, work / "k.pub")),
                    ("bare", lambda: _bare(cert))]
            if repeat % 2:
                pair.reverse()
            runs.append({label: function() for label, function in pair})
        command_line = _command_line(cli, work, cert)

    stages = {key: spread([r["stages"][key] for r in runs]) for key in runs[0]["stages"]}
    result = {
        "tensors_added_per_map": args.tensors, "certificate_bytes": size,
        "stages": stages, "bare_json_loads_s": spread([r["bare"] for r in runs]),
        "ratio_stages_over_bare": spread([r["stages"]["total_s"] / r["bare"] for r in runs]),
        "verify_command_line": command_line, "runs": runs,
    }
    saved = save("many_tensors", result)

    rows = [["what", "median s", "min", "max"]]
    for key, value in stages.items():
        rows.append([key, value["median"], value["min"], value["max"]])
    for label, key in (("json.loads", "bare_json_loads_s"), ("ratio", "ratio_stages_over_bare")):
        rows.append([label, result[key]["median"], result[key]["min"], result[key]["max"]])
    show(rows)
    print(f"mbd-cert verify: {command_line['wall_s']:.2f} s, exit {command_line['exit_code']}")
    print(f"certificate {size / 2**20:.1f} MiB; wrote {saved}")


if __name__ == "__main__":
    main()
