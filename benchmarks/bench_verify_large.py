"""Level-1 verification of a large generated model against ``sha256sum`` of the same file.

Generates a model of the built-in architecture (4 GB by default) in a temporary
directory: 16 modalities, the architecture's limit, give 199 float32 tensors, and the
input width is chosen so that the file reaches the requested size. The audio encoder is
zero, as a deletion leaves it. The script certifies the file by re-signing a real
certificate from the synthetic corpus with the large model's config and commitment,
so level 1 runs every check, the tensor layout included, and passes. It then
alternates ``mbd-cert verify`` (level 1) and ``sha256sum`` on the file. A third command
runs the same level-1 checks through the library (``mbd_cert.verify.verify`` in a fresh
interpreter), which shows the cost of the CLI's start-up apart from the checks.
``openssl dgst -sha256`` is timed too, because coreutils ``sha256sum`` may use a slower
SHA-256 implementation than the OpenSSL one that Python's ``hashlib`` uses, and the
speed-up from parallel tensor digests should be judged against the faster of the two.
Wall time and peak resident memory come from a wrapper process around each command.
The file stays in the page cache between runs (it is smaller than RAM), so both
commands hash from memory: the ratio compares hashing throughput, not disk speed.

The weights are float32, the dtype the built-in architecture fixes (R-DEL-2), so 4 GB
(decimal, 3.73 GiB) is the largest model under its cap of 10**9 parameters.

Usage: python benchmarks/bench_verify_large.py [--quick] [--gb 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, save, show, spread  # noqa: E402

API_SNIPPET = (
    "import sys\n"
    "from mbd_cert import signing\n"
    "from mbd_cert.verify import VerifyOptions, verify\n"
    "key = signing.load_public_key(sys.argv[3])\n"
    "report = verify(sys.argv[1], sys.argv[2], VerifyOptions(trusted_keys=[key]))\n"
    "sys.exit(0 if report.verified else 1)\n"
)
MODALITIES = ["audio"] + [f"m{i:02d}" for i in range(1, 16)]
DELETED = "audio"
LAYERS = {"hidden_dim": 2048, "shared_dim": 64, "private_dim": 64, "fusion_hidden": 2048}
ENTRY_BYTES = 4  # float32, Architecture.weight_dtype of the built-in architecture


def large_config(base: dict[str, Any], total_bytes: int) -> dict[str, Any]:
    """Return ``base`` widened to 16 modalities with at most ``total_bytes`` of float32."""
    from mbd_cert.arch import _mbd_config

    config = {**base, **LAYERS, "modalities": MODALITIES, "deleted_modalities": [DELETED],
              "seq_len": dict.fromkeys(MODALITIES, 1)}
    # The parameter count is linear in the input width w; solve for the target size.
    at = {w: _mbd_config.parameter_count({**config, "input_dims": dict.fromkeys(MODALITIES, w)})
          for w in (1, 2)}
    # Rounded down, so a 4 GB target stays within MAX_PARAMETERS.
    width = max(1, (total_bytes // ENTRY_BYTES - at[1]) // (at[2] - at[1]) + 1)
    config["input_dims"] = dict.fromkeys(MODALITIES, width)
    return _mbd_config.validate_config(config)


def write_model(path: Path, config: dict[str, Any], seed: int = 0) -> list[str]:
    """Stream the model of ``config`` with random weights; return the zeroed encoder.

    The header is the one ``mbd-cert issue`` would write for these tensors, and the
    data follow in its order, because level 1 accepts no other layout (R-DEL-2).
    """
    from mbd_cert import _safetensors
    from mbd_cert.arch import _mbd_config

    shapes = _mbd_config.tensor_shapes(config)
    zeroed = [name for name in shapes if name.startswith(f"encoders.{DELETED}.")]
    metadata = {"format": "mbd-cert-model/1", "architecture": "mbd-sentiment"}
    raw = _safetensors.canonical_header_bytes(
        [(name, "F32", shape) for name, shape in shapes.items()], metadata)
    order = sorted(shapes, key=lambda name: name.encode("utf-8"))  # one dtype: by name
    rng = np.random.default_rng(seed)
    block = 1 << 22  # entries per write, so the generator's memory stays small
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        for name in order:
            left = int(np.prod(shapes[name]))
            while left:
                count = min(left, block)
                values = (np.zeros(count) if name in zeroed
                          else rng.standard_normal(count) * 0.02)
                handle.write(values.astype("<f4").tobytes())
                left -= count
    return zeroed


def certify(workdir: Path, model: Path, small_cert: Path, key: Path,
            config: dict[str, Any], zeroed: list[str]) -> Path:
    """Re-sign a real certificate so that it commits to ``model`` and return its path."""
    from mbd_cert import _safetensors, certificate, signing
    from mbd_cert._commitment import file_commitment

    doc = json.loads(small_cert.read_text())
    doc.pop("signature")
    digests = _safetensors.digest_file(model)
    header = _safetensors.read_header(model)
    doc["subject_model"]["architecture"]["config"] = config
    doc["subject_model"]["post_deletion"] = file_commitment(digests, header)
    doc["deletion"]["removed_tensors"] = sorted(zeroed)
    signed = certificate.sign_certificate(doc, signing.load_private_key(key))
    path = workdir / "cert.json"
    path.write_bytes(certificate.dump_certificate(signed))
    return path


def small_certificate(workdir: Path) -> tuple[Path, Path, Path]:
    """Train a tiny model, issue a certificate and return (cert, private key, public key)."""
    tiny = ["--corpus", "synthetic", "--seed", "0", "--epochs", "2", "--hidden-dim", "8",
            "--shared-dim", "4", "--private-dim", "4", "--fusion-hidden", "8",
            "--probe-members", "16", "--probe-nonmembers", "16", "--no-progress"]
    cli = [sys.executable, "-m", "mbd_cert.cli"]
    subprocess.run([*cli, "keygen", "--out", str(workdir / "issuer")], check=True,
                   capture_output=True)
    subprocess.run([*cli, "train", *tiny, "--out", str(workdir / "ck")], check=True,
                   capture_output=True)
    subprocess.run([*cli, "issue", "--checkpoint", str(workdir / "ck"), "--modality", "audio",
                    "--epsilon", "1", "--steps", "2", "--key", str(workdir / "issuer.key"),
                    "--out", str(workdir / "del")], check=True, capture_output=True)
    return workdir / "del" / "cert.json", workdir / "issuer.key", workdir / "issuer.pub"


def _safetensors_names(model: Path) -> list[str]:
    from mbd_cert import _safetensors

    return list(_safetensors.read_header(model).tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.4 GB and 2 repeats")
    parser.add_argument("--gb", type=float, default=4.0,
                        help="model size in GB (10**9 bytes); at most 4 for float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary folder")
    args = parser.parse_args()
    gb, repeats = (0.4, 2) if args.quick else (args.gb, args.repeats)
    total = int(gb * 10**9)

    workdir = Path(tempfile.mkdtemp(prefix="mbd-bench-verify-", dir=args.dir))
    try:
        free = shutil.disk_usage(workdir).free
        if free < total * 1.2:
            scaled = free / 1.2 / 10**9
            print(f"NOTE: only {free / 10**9:.1f} GB free; model scaled to {scaled:.1f} GB")
            total, gb = int(scaled * 10**9), scaled
        cert_small, key, pub = small_certificate(workdir)
        base = json.loads(cert_small.read_text())["subject_model"]["architecture"]["config"]
        config = large_config(base, total)
        model = workdir / "model.safetensors"
        zeroed = write_model(model, config)
        cert = certify(workdir, model, cert_small, key, config, zeroed)
        verify = [sys.executable, "-m", "mbd_cert.cli", "verify", str(cert), str(model),
                  "--key", str(pub)]
        checksum = ["sha256sum", str(model)]
        library = [sys.executable, "-c", API_SNIPPET, str(cert), str(model), str(pub)]
        openssl = ["openssl", "dgst", "-sha256", str(model)]
        run_measured(checksum)  # warm the page cache for both commands
        runs = []
        for repeat in range(repeats):
            # Alternate the order so that neither command always runs second.
            pair = [("verify", verify), ("sha256sum", checksum), ("verify_api", library)]
            if shutil.which("openssl"):
                pair.append(("openssl", openssl))
            if repeat % 2:
                pair.reverse()
            results = {label: run_measured(command) for label, command in pair}
            runs.append(results)
        ratios = [r["verify"]["wall_s"] / r["sha256sum"]["wall_s"] for r in runs]
        api_ratios = [r["verify_api"]["wall_s"] / r["sha256sum"]["wall_s"] for r in runs]
        payload = {
            "model_bytes": model.stat().st_size,
            "tensors": len(_safetensors_names(model)),
            "repeats": repeats,
            "verify_wall_s": spread([r["verify"]["wall_s"] for r in runs]),
            "sha256sum_wall_s": spread([r["sha256sum"]["wall_s"] for r in runs]),
            "ratio_verify_over_sha256sum": spread(ratios),
            "verify_api_wall_s": spread([r["verify_api"]["wall_s"] for r in runs]),
            "ratio_verify_api_over_sha256sum": spread(api_ratios),
            "verify_api_max_rss_mib": spread([r["verify_api"]["max_rss_mib"] for r in runs]),
            **({"openssl_wall_s": spread([r["openssl"]["wall_s"] for r in runs]),
                "ratio_verify_over_openssl": spread(
                    [r["verify"]["wall_s"] / r["openssl"]["wall_s"] for r in runs]),
                "ratio_verify_api_over_openssl": spread(
                    [r["verify_api"]["wall_s"] / r["openssl"]["wall_s"] for r in runs])}
               if "openssl" in runs[0] else {}),
            "verify_max_rss_mib": spread([r["verify"]["max_rss_mib"] for r in runs]),
            "sha256sum_max_rss_mib": spread([r["sha256sum"]["max_rss_mib"] for r in runs]),
            "runs": runs,
        }
        saved = save("verify_large" + ("_quick" if args.quick else ""), payload)
        show([
            ["measure", "median", "min", "max"],
            *[[key, payload[key]["median"], payload[key]["min"], payload[key]["max"]]
              for key in ("verify_wall_s", "sha256sum_wall_s", "ratio_verify_over_sha256sum",
                          "verify_api_wall_s", "ratio_verify_api_over_sha256sum",
                          "openssl_wall_s", "ratio_verify_over_openssl",
                          "ratio_verify_api_over_openssl", "verify_max_rss_mib",
                          "verify_api_max_rss_mib", "sha256sum_max_rss_mib")
              if key in payload],
        ])
        print(f"model {payload['model_bytes'] / 10**9:.2f} GB, {repeats} repeats; wrote {saved}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
