"""Checks across a repository's certificates, after verify-repo has verified each one.

* Forked chains (R-REPO-8): certificates whose chains branch from one model are
  composed jointly, and the joint epsilon is held against the policy.
* Published pre-deletion models (R-REPO-9): a file anywhere below the root that is a
  certificate's pre-deletion model fails that certificate, and a directory that the
  search cannot list fails the run.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mbd_cert import errors
from mbd_cert._numbers import exact_number
from mbd_cert._repo_results import RepoResult

if TYPE_CHECKING:
    from mbd_cert.report import CheckResult

UNREADABLE_DIRECTORY_CHECK = "unreadable-directory"
_CODE_SCAN_INCOMPLETE = "E_SCAN_INCOMPLETE"


def check_forks(root: Path, results: Sequence[RepoResult], policy: Any,
                chain_file_cache: Any) -> None:
    """Account jointly for verified certificates whose chains branch (R-REPO-8).

    Each certificate in a branching tree gets a ``chain-fork`` check that fails when
    the tree's joint epsilon exceeds the policy's ``max_cumulative_epsilon``, and a
    warning otherwise.
    """
    from mbd_cert import certificate, chain
    from mbd_cert._repo_forks import find_forks
    from mbd_cert._terminal import terminal_text
    from mbd_cert.report import CheckResult

    chains = {}
    for result in results:
        if result.exit_code != 0:
            continue  # an unverified chain is not evidence of anything
        path = root / result.certificate
        try:
            doc = certificate.load_certificate(path)
            chains[result.certificate] = chain.walk_chain(doc, path.parent,
                                                          file_cache=chain_file_cache)
        except errors.MbdCertError as error:
            # Verified a moment ago: only a file changed during the run gets here.
            result.warnings.append(f"not checked for forked chains: {error.message}")
    by_path = {result.certificate: result for result in results}
    limit = policy.max_cumulative_epsilon
    for fork in find_forks(chains):
        names = ", ".join(terminal_text(name) for name in fork.certificates)
        # The joint epsilon and the verdict first: the table shortens failed checks'
        # details (render_table).
        head = (f"forked chain: joint epsilon {exact_number(fork.epsilon)} at delta "
                f"{exact_number(fork.delta)}")
        tail = (f"for anyone holding all the models of {fork.deletions} deletions that "
                f"extend the same model, more than any one certificate states; the "
                f"certificates: {names}")
        for name in fork.certificates:
            result = by_path[name]
            if limit is not None and fork.epsilon > limit:
                result.report.record(CheckResult(
                    "chain-fork", "fail",
                    f"{head}, above the policy's max_cumulative_epsilon "
                    f"{exact_number(limit)}, {tail}",
                    code="E_POLICY_VIOLATION", requirement="R-REPO-8",
                    value=fork.epsilon, threshold=limit))
                result.exit_code = max(result.exit_code, 1)
            else:
                result.warnings.append(f"{head} {tail}")


def check_published_pre_deletion(root: Path, results: Sequence[RepoResult],
                                 unreadable: dict[Path, str] | None = None
                                 ) -> dict[str, set[str]]:
    """Fail each certificate whose pre-deletion model lies in the repository (R-REPO-9).

    That file still contains the deleted encoder, so publishing it undoes the deletion,
    whatever the certificate claims. A certificate that did not verify gets a warning.
    Each directory that cannot be listed is added to ``unreadable``, when given, with
    the reason, for :func:`unreadable_directories_check`.

    Returns:
        The files reported on each certificate, relative to ``root`` with ``/``
        separators. Strict mode does not report them a second time as models without a
        certificate, and the search for deleted encoders (R-REPO-12) does not report
        them again on that certificate.
    """
    from mbd_cert._published_models import header_index, pre_deletion_copies
    from mbd_cert._terminal import terminal_text
    from mbd_cert.report import CheckResult

    index = header_index(root, unreadable)
    # One full hash per file for the whole run, however many links point at its header.
    file_digests: dict[Path, str | None] = {}
    reported: dict[str, set[str]] = {}
    for result in results:
        doc = result.certificate_doc
        if doc is None:
            continue  # verification reports an unreadable certificate
        earlier = result.report.earlier_links if result.report is not None else []
        details = []
        found = 0
        # The model before an earlier deletion of the chain contains that deletion's
        # encoder and every later one, so it undoes them all.
        for position, link in enumerate([*earlier, doc], start=1):
            copies = pre_deletion_copies(link["subject_model"]["pre_deletion"], index,
                                         file_digests)
            if not copies:
                continue
            found += len(copies)
            deletion_name = ("this deletion" if link is doc else
                     f"deletion {position} of this chain (certificate "
                     f"{terminal_text(link['certificate_id'])})")
            names = ", ".join(terminal_text(path.relative_to(root).as_posix())
                              for path in copies)
            reported.setdefault(result.certificate, set()).update(
                path.relative_to(root).as_posix() for path in copies)
            details.append(
                f"{names}: the model before {deletion_name} is published in the repository; its "
                "file digest is that certificate's subject_model.pre_deletion.file_digest. "
                f"It still contains the deleted {terminal_text(link['deletion']['modality'])} "
                "encoder, so the deletion is undone for its readers. Remove it, from the "
                "version history too, and publish only the released model")
        if not details:
            continue
        detail = "; ".join(details)
        if result.report is None:
            result.warnings.append(detail)
            continue
        result.report.record(CheckResult(
            "pre-deletion-model", "fail", detail, code="E_PRE_DELETION_PUBLISHED",
            requirement="R-REPO-9", value=found, threshold=0))
        result.exit_code = max(result.exit_code, 1)
    return reported


def unreadable_directories_check(root: Path,
                                 unreadable: Mapping[Path, str]) -> CheckResult | None:
    """Return one failed check naming the directories the scans could not list, or None.

    The scans for pre-deletion models (R-REPO-9) and for models without a certificate
    (R-REPO-10) did not look inside them, so a model there would pass unreported. The
    run cannot decide that no such model exists, so the check fails rather than warns.
    """
    from mbd_cert._terminal import terminal_text
    from mbd_cert.report import CheckResult

    if not unreadable:
        return None
    names = ", ".join(f"{terminal_text(path.relative_to(root).as_posix())} ({reason})"
                      for path, reason in sorted(unreadable.items()))
    noun, pronoun = ("directory", "it") if len(unreadable) == 1 else ("directories", "them")
    detail = (f"cannot list {noun} {names}: the searches for pre-deletion models "
              f"(R-REPO-9) and for models without a certificate (R-REPO-10) skipped "
              f"{pronoun}, so a model there would pass unreported; run verify-repo as a "
              f"user who can read {pronoun}, or move {pronoun} out of the repository")
    return CheckResult(UNREADABLE_DIRECTORY_CHECK, "fail", detail, code=_CODE_SCAN_INCOMPLETE,
                       requirement="R-REPO-9", value=len(unreadable), threshold=0)
