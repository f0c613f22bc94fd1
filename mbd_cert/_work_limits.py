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


# Values that the forward passes over the whole probe set compute, layer by layer:
# probe samples times Architecture.activation_entries, in float64. The passes keep a
# part of them at a time. On 2 CPU cores, a count about 1.4e8 (1.1 GB) larger made a
# level-3 run's peak memory 0.25 GB larger and its issue run's 1 GB larger. That count
# is an estimate, scaled from 9.4e7 measured before the padding mask was counted. The
# cap, 8 GiB as counted, admits 400 probe samples of the bundled corpus (3.4e6) and of
# ICT-MMMO (1.6e7) many times over.
MAX_ACTIVATION_ENTRIES = 2**30

# Arithmetic operations of the replay: passes over the probe set times probe samples
# times Architecture.forward_operations. The sample-step caps above assume samples of
# the bundled model's cost, while wide layers over long sequences make one sample
# thousands of times slower. The cap is 2,000,000 sample-steps of a sample of 10**6
# operations, above ICT-MMMO's config (6.4e5). On one thread of a 2-core machine,
# replays of four configs took 0.03 to 0.26 ns per operation, from 4096-wide layers to
# the bundled config. A replay at the cap would take about 1 to 9 minutes there (an
# estimate).
MAX_REPLAY_OPERATIONS = 2 * 10**12
# Passes that levels 2 and 3 make besides the update steps: the saliency gradients,
# the update's Fisher and level 3's probes (an estimate, counted in update steps).
REPLAY_EXTRA_PASSES = 10
# The leave-one-out reruns of a reference-retrain sensitivity, eight updates' worth as
# for MAX_EVIDENCE_SAMPLE_STEPS.
MAX_EVIDENCE_OPERATIONS = 8 * MAX_REPLAY_OPERATIONS


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


def check_activation_work(per_sample: int | None, samples: int, *, source: str) -> None:
    """Raise ``LimitExceeded`` when the forward passes over the probe set are over the cap.

    The model config, not the probe file, sets how many values one sample's forward
    pass computes: a one-feature input of many steps through the widest layers costs
    tens of thousands of values per input value.

    Args:
        per_sample: ``Architecture.activation_entries`` of the pre-deletion config, or
            None for an architecture that does not state it, which is not capped.
        samples: Probe set size.
        source: Where the numbers come from, for the message.
    """
    # NOTE: an architecture from another package without activation_entries gets no
    # cap here, so its config alone can still ask for any amount of memory.
    if per_sample is None:
        return
    work = per_sample * samples
    if work > MAX_ACTIVATION_ENTRIES:
        raise LimitExceeded(
            f"{source}: the forward pass over {samples} probe samples computes about "
            f"{work} values ({per_sample} per sample for the model config), more than "
            f"the cap of {MAX_ACTIVATION_ENTRIES}",
            hint="use fewer probe samples, or a model config with shorter input "
            "sequences or narrower layers",
            code="E_LIMIT_EXCEEDED",
        )


def check_operation_work(per_sample: int | None, steps: int, samples: int, *, runs: int = 0,
                         source: str) -> None:
    """Raise ``LimitExceeded`` when the replay's arithmetic is over a cap (R-LIM-8).

    Args:
        per_sample: ``Architecture.forward_operations`` of the pre-deletion config, or
            None for an architecture that does not state it, which is not capped.
        steps: ``update.steps``.
        samples: Probe set size.
        runs: Reference-retrain runs (the number of stated distances), 0 for another
            sensitivity method; level 2 adds :data:`EVIDENCE_SPOT_CHECKS` reruns.
        source: Where the numbers come from, for the message.
    """
    # NOTE: an architecture from another package without forward_operations gets no
    # cap here, so its config can still make each probe sample arbitrarily slow.
    if per_sample is None:
        return
    work = (steps + REPLAY_EXTRA_PASSES) * samples * per_sample
    if work > MAX_REPLAY_OPERATIONS:
        raise LimitExceeded(
            f"{source}: {steps} update steps and {REPLAY_EXTRA_PASSES} more passes over "
            f"{samples} probe samples cost about {work} operations ({per_sample} per "
            f"sample for the model config), more than the cap of {MAX_REPLAY_OPERATIONS}",
            hint="use fewer descent steps or probe samples, or a model config with shorter "
            "input sequences or narrower layers",
            code="E_LIMIT_EXCEEDED",
        )
    if not runs:
        return
    # Each rerun computes its Fisher and then takes the steps.
    work = (runs + EVIDENCE_SPOT_CHECKS) * (steps + 1) * samples * per_sample
    if work > MAX_EVIDENCE_OPERATIONS:
        raise LimitExceeded(
            f"{source}: {runs} reference-retrain runs and {EVIDENCE_SPOT_CHECKS} spot checks "
            f"of {steps + 1} passes over {samples} probe samples cost about {work} "
            f"operations ({per_sample} per sample for the model config), more than the cap "
            f"of {MAX_EVIDENCE_OPERATIONS} that level 2 replays",
            hint="use fewer --reference-runs, update steps or probe samples, or "
            "--sensitivity-method clip-bound",
            code="E_LIMIT_EXCEEDED",
        )
