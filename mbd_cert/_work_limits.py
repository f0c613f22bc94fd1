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

# Descent steps of the masked update. The default is 20.
MAX_UPDATE_STEPS = 1_000
# Steps times probe samples. The defaults (20 steps, 400 samples) use 8,000.
MAX_UPDATE_SAMPLE_STEPS = 2_000_000
# Runs times steps times probe samples of the reference-retrain reruns (R-PRIV-5),
# which level 2 replays on top of the update: four updates' worth, so the default 4
# runs of any update under the cap above stay verifiable.
MAX_EVIDENCE_SAMPLE_STEPS = 4 * MAX_UPDATE_SAMPLE_STEPS


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
            hint="use fewer descent steps (the default is 20)",
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
    """Raise ``LimitExceeded`` when replaying ``runs`` leave-one-out updates is over the cap.

    Args:
        runs: Reference-retrain runs (the number of stated distances).
        steps: ``update.steps``.
        samples: Probe set size.
        source: Where the numbers come from, for the message.
    """
    work = runs * steps * samples
    if work > MAX_EVIDENCE_SAMPLE_STEPS:
        raise LimitExceeded(
            f"{source}: {runs} reference-retrain runs of {steps} steps over {samples} probe "
            f"samples is {work} sample-steps, more than the cap of "
            f"{MAX_EVIDENCE_SAMPLE_STEPS} that level 2 replays",
            hint="use fewer --reference-runs or update steps, or --sensitivity-method "
            "clip-bound",
            code="E_LIMIT_EXCEEDED",
        )
