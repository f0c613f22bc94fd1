"""Figures and the HTML page of ``mbd-cert report``.

Four PNG figures, each drawn from certificates and verification reports only (no
model, no torch):

* ``privacy_utility.png``: Acc2 and MAE after deleting one modality against epsilon,
  one line per update clip norm, with the pre-deletion values as reference lines;
* ``chain_budget.png``: the cumulative epsilon over a chain of deletions, tight
  (mu-GDP) against RDP and naive summation;
* ``proxy_scatter.png``: the saliency proxy against the true leave-one-out increment
  of the sampled mask entries, with the +-8 % band;
* ``verification.png``: the status of every check of each verification report.

``index.html`` embeds the PNGs as base64 data, so it is one self-contained file.

Stability: internal; the figure files and their names are documented in README.md.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: figures are only written to files

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import NullLocator, ScalarFormatter  # noqa: E402

from mbd_cert import _paths, accounting  # noqa: E402
from mbd_cert._numbers import exact_number  # noqa: E402
from mbd_cert.chain import ChainLink  # noqa: E402

# Name of the Acc2 convention that the figures and tables show: metrics.utility's
# acc2_non_negative. The certificates also carry acc2_positive (mbd_cert.metrics).
ACC2_LABEL = "Acc2 (negative vs non-negative)"

# Largest magnitude, and smallest non-zero one, of a number that the figures place on
# an axis. The schema admits any double in the fields they plot, and matplotlib 3.11
# raised while laying out axes whose span or margins overflow a double, or that hold
# a subnormal epsilon. The tables show every number as the certificate states it.
DRAWN_MAX = 1e100
DRAWN_MIN = 1e-100
OUT_OF_RANGE = "outside the range the figures draw"

STATUS_COLOURS = {"pass": "#4caf50", "fail": "#e53935", "skipped": "#bdbdbd",
                  "inconclusive": "#ab47bc"}
DPI = 120


@dataclass
class Section:
    """One part of the HTML page: a title, an optional PNG, notes and a table."""

    title: str
    png: bytes | None = None
    notes: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _drawable(value: Any) -> bool:
    """Tell whether ``value`` is a number between the figures' range bounds, or 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    # NaN and infinity fail both comparisons.
    return value == 0 or DRAWN_MIN <= abs(value) <= DRAWN_MAX


def _utility(doc: Mapping[str, Any], side: str, key: str | None = None) -> Mapping[str, Any]:
    utility = doc["metrics"]["utility"]
    block = utility.get(side, {})
    if key is None:
        return next(iter(block.values()), {}) if block else {}
    return block.get(key, {}) if isinstance(block, Mapping) else {}


def privacy_utility(docs: Sequence[Mapping[str, Any]], modality: str) -> Section:
    """Plot Acc2 and MAE after deleting ``modality`` against epsilon (first deletions only)."""
    sweep = [
        d for d in docs
        if d["deletion"]["modality"] == modality and d["accounting"]["sequence_number"] == 1
        and d["metrics"]["utility"].get("after") and _drawable(d["privacy"]["epsilon"])
    ]
    section = Section(f"Privacy-utility trade-off: deleting {modality}")
    left_out = [d for d in docs if d not in sweep]
    if left_out:
        section.notes.append(
            f"not drawn ({len(left_out)}): " + ", ".join(
                f"{d['certificate_id']} ({_why_not_drawn(d, modality)})" for d in left_out))
    if not sweep:
        section.notes.append(f"no first-deletion certificate of {modality} with utility metrics")
        return section
    series: dict[tuple[float, str], list[Mapping[str, Any]]] = {}
    for doc in sweep:
        key = (float(doc["update"]["clip_norm"]), str(doc["privacy"]["sensitivity_method"]))
        series.setdefault(key, []).append(doc)
    epsilons = sorted({float(d["privacy"]["epsilon"]) for d in sweep})
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for metric, ax, label in ((("acc2_non_negative"), axes[0], ACC2_LABEL),
                              ("mae", axes[1], "MAE")):
        for (clip, method), group in sorted(series.items()):
            group = sorted(group, key=lambda d: d["privacy"]["epsilon"])
            xs = [d["privacy"]["epsilon"] for d in group]
            ys = [_drawn_or_none(_utility(d, "after").get(metric), section,
                                 f"{d['certificate_id']}: {metric} after the deletion")
                  for d in group]
            ax.plot(xs, ys, marker="o", label=f"after deletion, clip norm {clip:g} ({method})")
        reference = sweep[0]
        for block, style, text in (("all", "--", "before, all modalities"),
                                   (f"missing_{modality}", ":", f"before, {modality} missing")):
            value = _drawn_or_none(_utility(reference, "before", block).get(metric), section,
                                   f"{reference['certificate_id']}: {metric} {text}")
            if value is not None:
                ax.axhline(value, linestyle=style, color="grey", label=text)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(epsilons)
        ax.set_xlabel("epsilon of the deletion (delta as certified)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"Utility after deleting {modality} (n = "
                    f"{sweep[0]['metrics']['utility'].get('n', '?')} held-out samples)")
    section.png = _png(figure)
    section.header = ["clip norm", "epsilon", "sigma", ACC2_LABEL, "MAE", "Pearson r"]
    for doc in sorted(sweep, key=lambda d: (d["update"]["clip_norm"], d["privacy"]["epsilon"])):
        after = _utility(doc, "after")
        section.rows.append([
            f"{doc['update']['clip_norm']:g}", exact_number(doc["privacy"]["epsilon"]),
            exact_number(doc["privacy"]["sigma"]), _fmt(after.get("acc2_non_negative")),
            _fmt(after.get("mae")), _fmt(after.get("pearson_r")),
        ])
    before = _utility(sweep[0], "before", "all")
    section.notes.append(
        f"before deletion, all modalities: {ACC2_LABEL} "
        f"{_fmt(before.get('acc2_non_negative'))}, MAE {_fmt(before.get('mae'))}, "
        f"Pearson r {_fmt(before.get('pearson_r'))}"
    )
    section.notes.append(
        f"{ACC2_LABEL} is acc2_non_negative of the certificates' metrics: the share of "
        "samples whose prediction and label are both negative (< 0) or both non-negative "
        "(>= 0). The certificates also carry acc2_positive, negative against positive "
        "with zero labels left out."
    )
    return section


def _why_not_drawn(doc: Mapping[str, Any], modality: str) -> str:
    if doc["deletion"]["modality"] != modality:
        return f"deletes {doc['deletion']['modality']}; choose it with --modality"
    if doc["accounting"]["sequence_number"] != 1:
        return (f"deletion {doc['accounting']['sequence_number']} of a chain; the figure "
                "compares first deletions")
    if not doc["metrics"]["utility"].get("after"):
        return "no utility metrics: issued without an evaluation set"
    return f"epsilon {exact_number(doc['privacy']['epsilon'])} is {OUT_OF_RANGE}"


def _drawn_or_none(value: Any, section: Section, what: str) -> Any:
    """Return ``value`` when the figure can draw it, or else note ``what`` and return None.

    matplotlib leaves a None point out of its line. A value that is already None or
    not a number is returned as it is, without a note.
    """
    if value is None or _drawable(value) or not isinstance(value, (int, float)):
        return value
    section.notes.append(f"not drawn: {what} is {exact_number(value)}, {OUT_OF_RANGE} "
                         f"(+-{DRAWN_MAX:g}, non-zero values from {DRAWN_MIN:g})")
    return None


def chain_budget(links: Sequence[ChainLink], source: Path | str | None = None) -> Section:
    """Plot the cumulative epsilon after each deletion of a chain (tight, RDP, naive).

    ``source`` is the file of the newest certificate. The notes name it and its id,
    because certificates of several chains can be passed and only one chain is drawn.
    """
    section = Section("Cumulative privacy budget over the chain")
    newest = links[-1].doc
    where = f" ({source})" if source is not None else ""
    section.notes.append(
        f"The chain of certificate {newest.get('certificate_id')}{where}, deletion "
        f"{links[-1].sequence_number} of its model.")
    delta = links[-1].doc["accounting"]["delta"]
    entries: list[accounting.ChainEntry] = []
    tight, rdp, naive = [], [], []
    section.header = ["deletion", "modality", "epsilon",
                      f"mu-GDP (tight), at delta {exact_number(delta)}",
                      f"RDP, at delta {exact_number(delta)}", "naive sum",
                      "delta of the naive sum"]
    for link in links:
        privacy = link.doc["privacy"]
        entries.append(accounting.ChainEntry(privacy["epsilon"], privacy["delta"],
                                             privacy["sigma"], privacy["sensitivity"]))
        account = accounting.account_chain(entries, delta)
        # The certified value where the link states it at this delta: a first deletion
        # states its epsilon, which the conversion may undercut by a unit in the last
        # place (SPEC.md, R-CHAIN-11).
        stated = link.doc["accounting"]
        certified = stated["cumulative_epsilon"] if stated["delta"] == delta else account.epsilon
        deletion = f"deletion {link.sequence_number}"
        tight.append(_drawn_or_none(certified, section,
                                    f"the certified epsilon of {deletion}"))
        rdp.append(_drawn_or_none(account.rdp_epsilon, section,
                                  f"the RDP epsilon of {deletion}"))
        naive.append(_drawn_or_none(account.naive_epsilon, section,
                                    f"the naive sum of {deletion}"))
        section.rows.append([str(link.sequence_number), link.doc["deletion"]["modality"],
                             exact_number(privacy["epsilon"]), exact_number(certified),
                             exact_number(account.rdp_epsilon),
                             exact_number(account.naive_epsilon),
                             exact_number(account.naive_delta)])
    steps = [link.sequence_number for link in links]
    figure, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, naive, marker="s", label=_naive_label(links, delta))
    ax.plot(steps, rdp, marker="^", label=f"RDP, at delta = {exact_number(delta)}")
    ax.plot(steps, tight, marker="o",
            label=f"mu-GDP (tight, certified), at delta = {exact_number(delta)}")
    ax.set_xticks(steps)
    ax.set_xlabel("deletion number k in the chain")
    ax.set_ylabel("cumulative epsilon")
    ax.set_title("budget spent by the chain of deletions", fontsize=10)
    for step, value in zip(steps, tight, strict=True):
        if value is not None:
            ax.annotate(f"{value:.3f}", (step, value), textcoords="offset points",
                        xytext=(8, -4), fontsize=8)
    ax.margins(x=0.08, y=0.1)
    ax.grid(alpha=0.3)
    # Below the axes: inside, the longer labels covered the last points.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    section.png = _png(figure)
    section.notes.append("The naive sum holds at the sum of the deltas; the other two at "
                         f"delta = {exact_number(delta)}. Not verified here: run "
                         "'mbd-cert verify'.")
    return section


def _naive_label(links: Sequence[ChainLink], delta: float) -> str:
    """Return the legend label of the naive sum, which is valid at the sum of the deltas."""
    if all(link.doc["privacy"]["delta"] == delta for link in links):
        return f"naive sum (basic composition), at delta = k x {exact_number(delta)}"
    return "naive sum (basic composition), at the sum of the deltas"


def proxy_scatter(docs: Sequence[Mapping[str, Any]]) -> Section:
    """Scatter the saliency proxy against the true leave-one-out increment."""
    section = Section("Saliency proxy against the true leave-one-out increment")
    rated = []
    duplicates: list[str] = []
    seen: set[tuple[str, str, Any]] = set()
    for doc in docs:
        quality = doc["saliency"].get("proxy_quality")
        if not isinstance(quality, Mapping) or not quality.get("samples"):
            continue
        # Deletions of one modality from one model with one seed sample the same entries.
        key = (doc["subject_model"]["pre_deletion"]["manifest_digest"],
               doc["deletion"]["modality"], quality.get("seed"))
        if key not in seen:
            seen.add(key)
            rated.append(doc)
        else:
            duplicates.append(doc["certificate_id"])
    if duplicates:
        section.notes.append(
            f"not listed ({len(duplicates)}), because an earlier certificate of the same "
            f"model, modality and seed sampled the same entries: {', '.join(duplicates)}")
    if not rated:
        section.notes.append("no certificate carries saliency.proxy_quality samples")
        return section
    figure, ax = plt.subplots(figsize=(5.5, 5))
    section.header = ["certificate", "modality", "n", "Spearman rho", "share within +-8 %"]
    largest = max(max(abs(s["true"]), abs(s["proxy"]))
                  for doc in rated[:6] for s in doc["saliency"]["proxy_quality"]["samples"])
    # Plot in units of a power of ten, named in the axis labels, instead of an offset
    # text that matplotlib draws over the x label.
    exponent = math.floor(math.log10(largest)) if largest > 0 else 0
    # 10.0 ** e underflows to 0 below e = -323 (subnormal values), so clamp the unit.
    exponent = max(exponent, -300)
    unit = 10.0 ** exponent
    low, high = 0.0, 0.0
    for doc in rated[:6]:
        quality = doc["saliency"]["proxy_quality"]
        true = [s["true"] / unit for s in quality["samples"]]
        proxy = [s["proxy"] / unit for s in quality["samples"]]
        low, high = min(low, *true, *proxy), max(high, *true, *proxy)
        ax.scatter(true, proxy, s=12, alpha=0.7,
                   label=f"{doc['deletion']['modality']} {doc['certificate_id'][:8]}")
        section.rows.append([doc["certificate_id"], doc["deletion"]["modality"],
                             str(quality["sample_size"]), _fmt(quality["spearman_rho"]),
                             _fmt(quality["share_within_tolerance"])])
    line = [low, high]
    tolerance = rated[0]["saliency"]["proxy_quality"].get("relative_tolerance", 0.08)
    ax.plot(line, line, color="black", linewidth=0.8, label="proxy = true")
    tolerance = _drawn_or_none(tolerance, section,
                               f"{rated[0]['certificate_id']}: the relative tolerance")
    if tolerance is not None:
        ax.fill_between(line, [v * (1 - tolerance) for v in line],
                        [v * (1 + tolerance) for v in line], color="grey", alpha=0.2,
                        label=f"+-{tolerance:.0%} band")
    scale = f" (x 1e{exponent})" if exponent else ""
    ax.set_xlabel(f"true increment of the forget objective{scale}")
    ax.set_ylabel(f"saliency proxy -g theta + H theta^2 / 2{scale}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    section.png = _png(figure)
    section.notes.append("Meng et al. (arXiv:2602.16144) report rho = 0.87 and 98 % within "
                         "+-8 % for their proxy.")
    return section


def _literal(text: str) -> str:
    """Return ``text`` with '$' escaped, so matplotlib draws it without mathtext."""
    return text.replace("$", r"\$")


def verification_results(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> Section:
    """Draw one column per verification report and one row per check, coloured by status."""
    section = Section("Verification results")
    if not reports:
        section.notes.append("no verification report given (--verify-report FILE)")
        return section
    names: list[str] = []
    for _, report in reports:
        for check in report.get("checks", []):
            if check["name"] not in names:
                names.append(check["name"])
    figure, ax = plt.subplots(figsize=(2.2 + 1.6 * len(reports), 0.9 + 0.35 * len(names)))
    for column, (label, report) in enumerate(reports):
        statuses = {c["name"]: c["status"] for c in report.get("checks", [])}
        for row, name in enumerate(names):
            status = statuses.get(name, "")
            ax.add_patch(Rectangle((column, row), 0.95, 0.9,
                                   color=STATUS_COLOURS.get(status, "white")))
            ax.text(column + 0.47, row + 0.45, status or "-", ha="center", va="center", fontsize=8)
        verdict = "VERIFIED" if report.get("verified") else "NOT VERIFIED"
        section.rows.append([label, str(report.get("certificate_id")), verdict])
    ax.set_xlim(0, len(reports))
    ax.set_ylim(len(names), 0)
    # Names come from the report files: a '$' would start matplotlib mathtext, and
    # a malformed formula raises while drawing.
    ax.set_yticks([i + 0.45 for i in range(len(names))], [_literal(n) for n in names],
                  fontsize=8)
    ax.set_xticks([i + 0.47 for i in range(len(reports))],
                  [_literal(label) for label, _ in reports], fontsize=7, rotation=15)
    ax.tick_params(length=0)
    ax.set_title("status of each check, per verification report", fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    section.png = _png(figure)
    section.header = ["report", "certificate", "result"]
    return section


def render_html(title: str, sections: Sequence[Section]) -> str:
    """Return a self-contained HTML page: every image is embedded as base64 PNG data."""
    parts = [
        "<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;}"
        "table{border-collapse:collapse;font-size:0.9em;}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right;}img{max-width:100%;}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<p>Figures are drawn from the claims in the certificates. Only the verification "
        "section reports checks that were run.</p>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.png is not None:
            data = base64.b64encode(section.png).decode("ascii")
            parts.append(f"<img alt=\"{html.escape(section.title)}\" "
                         f"src=\"data:image/png;base64,{data}\">")
        parts.extend(f"<p>{html.escape(note)}</p>" for note in section.notes)
        if section.rows:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>"
                                                 for h in section.header) + "</tr>")
            for row in section.rows:
                parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_png(section: Section, path: Path) -> bool:
    """Write the section's PNG to ``path``; return False when it has none."""
    if section.png is None:
        return False
    # Atomic replace: an existing file, or a link planted in --out, is replaced
    # rather than written through.
    _paths.atomic_write_bytes(path, section.png, overwrite=True, shared=True)
    return True


def _fmt(value: Any) -> str:
    """Format a metric to four decimals; JSON reads 1.0 back as the int 1, so ints too."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Four decimals would show 1e-200 as 0.0000 and 1e300 as 301 digits.
        return f"{value:.4f}" if _drawable(value) else exact_number(value)
    return str(value)
