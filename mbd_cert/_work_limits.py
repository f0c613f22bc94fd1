"""Caps on the work that a certificate can ask level 2 to replay (SPEC.md, section 10).

Level 2 replays the masked update: ``update.steps`` full-batch steps over every probe
sample. The schema allows 100,000 steps and the probe set 100,000 samples, so without
a cap a crafted certificate could keep a CI verifier busy for days. On the benchmark
machine (2 cores, docs/benchmarks.md), level 2 with 1,000 steps over the 400 probe
samples of the bundled model took 133 s, about 0.33 ms per sample-step. The cap below
therefore bounds the replay at roughly ten minutes there (an estimate). The issuer
checks the same caps, so every certificate it writes stays verifiable.

Stability: public constants; raising them is a compatible change, lowering them is not.
"""

from __future__ import annotations

from mbd_cert.errors import LimitExceeded

# Descent steps of the masked update. The default is 3.
MAX_UPDATE_STEPS = 1_000
# Steps times probe samples. The defaults (3 steps, 400 samples) use 1,200.
MAX_UPDATE_SAMPLE_STEPS = 2_000_000
# Leave-one-out updates on neighbours that level 2 draws itself, with fresh randomness,
# for a reference-retrain sensitivity (R-PRIV-5): the issuer cannot choose them.
EVIDENCE_SPOT_CHECKS = 4
# (Runs + spot checks) times steps times probe samples that level 2 replays on top of
# the update: eight updates' worth, so the default 4 runs of any update under the cap
# above stay verifiable.
MAX_EVIDENCE_SAMPLE_STEPS = 8 * MAX_UPDATE_SAMPLE_STEPS


def check_update_work(steps: int, samples: int, *, source: str) -> None:
    """Raise ``LimitExceeded`` when replaying ``steps`` over ``samples`` is over a cap.

    Args:
        steps: ``update.steps``.
        samples: Probe set size.
        source: Where the numbers come from, for the message (``certificate``,
            ``issue options``).
    """
    if steps > MAX_UPDATE_STEPS:
        raise LimitExceeded(
            f"{source}: update.steps is {steps}, more than the cap of {MAX_UPDATE_STEPS}",
            hint="use fewer descent steps (the default is 3)",
            code="E_LIMIT_EXCEEDED",
        )
    if steps * samples > MAX_UPDATE_SAMPLE_STEPS:
        raise LimitExceeded(
            f"{source}: {steps} update steps over {samples} probe samples is "
            f"{steps * samples} sample-steps, more than the cap of {MAX_UPDATE_SAMPLE_STEPS}",
            hint="use fewer descent steps or a smaller probe set",
            code="E_LIMIT_EXCEEDED",
        )


def check_evidence_work(runs: int, steps: int, samples: int, *, source: str) -> None:
    """Raise ``LimitExceeded`` when level 2's leave-one-out replays would be over the cap.

    Args:
        runs: Reference-retrain runs (the number of stated distances); level 2 adds
            :data:`EVIDENCE_SPOT_CHECKS` neighbours of its own.
        steps: ``update.steps``.
        samples: Probe set size.
        source: Where the numbers come from, for the message.
    """
    work = (runs + EVIDENCE_SPOT_CHECKS) * steps * samples
    if work > MAX_EVIDENCE_SAMPLE_STEPS:
        raise LimitExceeded(
            f"{source}: {runs} reference-retrain runs and {EVIDENCE_SPOT_CHECKS} spot checks "
            f"of {steps} steps over {samples} probe samples is {work} sample-steps, more "
            f"than the cap of {MAX_EVIDENCE_SAMPLE_STEPS} that level 2 replays",
            hint="use fewer --reference-runs or update steps, or --sensitivity-method "
            "clip-bound",
            code="E_LIMIT_EXCEEDED",
        )
