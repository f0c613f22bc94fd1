"""Forked chains in one repository: certificates that extend the same model (R-REPO-8).

Each certificate accounts for its own chain. Two certificates that extend the same
link, or two first deletions of the same model, release two models whose noisy
updates were all computed from one pre-deletion model and probe set. Anyone holding
both observes every mechanism of the tree, and mu-GDP composition over all of them
gives the privacy loss they jointly allow, which either chain alone understates.

Stability: internal.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mbd_cert.accounting import gdp_epsilon
from mbd_cert.canonical import canonical_bytes
from mbd_cert.chain import ChainLink

__all__ = ["Fork", "find_forks", "tensors_digest"]


@dataclass(frozen=True)
class Fork:
    """A tree of deletions that branches, with the privacy loss of all its mechanisms.

    Attributes:
        certificates: Repository paths of the certificates whose chains lie in the tree.
        branch_points: Where the tree branches: a shared previous certificate's digest,
            or ``model <tensors digest>`` for first deletions of the same model (see
            :func:`tensors_digest`).
        deletions: Distinct certificates (mechanisms) in the tree.
        epsilon: Joint epsilon of all of them at ``delta`` (mu-GDP composition).
        delta: The largest delta any certificate of the tree declares.
    """

    certificates: list[str]
    branch_points: list[str]
    deletions: int
    epsilon: float
    delta: float


@dataclass(frozen=True)
class _Node:
    parent: str
    mu: float
    delta: float


def tensors_digest(tensors: Mapping[str, Mapping[str, Any]]) -> str:
    """Return the digest that identifies a model by its tensors alone (R-REPO-8).

    The manifest digest also covers the file's metadata, so the same weights saved with
    other metadata would count as another model. This digest covers only the
    ``(name, dtype, shape, digest)`` entry of each tensor, sorted by name.

    Args:
        tensors: A commitment's ``tensors`` map: name to ``dtype``, ``shape``, ``digest``.

    Returns:
        ``"sha256:<hex>"`` of the RFC 8785 canonical bytes of the sorted entries.
    """
    entries = [{"name": name, "dtype": tensors[name]["dtype"],
                "shape": list(tensors[name]["shape"]), "digest": tensors[name]["digest"]}
               for name in sorted(tensors, key=lambda n: n.encode("utf-8"))]
    return "sha256:" + hashlib.sha256(canonical_bytes(entries)).hexdigest()


def _parent(links: Sequence[ChainLink], index: int) -> str:
    if index:
        return links[index - 1].digest
    pre = links[0].doc["subject_model"]["pre_deletion"]["tensors"]
    return f"model {tensors_digest(pre)}"


def find_forks(chains: Mapping[str, Sequence[ChainLink]]) -> list[Fork]:
    """Return the branching trees among verified chains, one per tree.

    Args:
        chains: Repository path of each verified certificate -> its walked chain,
            oldest link first and the certificate itself last.
    """
    nodes: dict[str, _Node] = {}
    for links in chains.values():
        for index, link in enumerate(links):
            privacy = link.doc["privacy"]
            nodes[link.digest] = _Node(_parent(links, index),
                                       float(privacy["sensitivity"]) / float(privacy["sigma"]),
                                       float(privacy["delta"]))
    children: dict[str, set[str]] = defaultdict(set)
    for digest, node in nodes.items():
        children[node.parent].add(digest)

    def root(digest: str) -> str:
        # A parent is the digest of an earlier certificate, so the walk cannot cycle.
        parent = nodes[digest].parent
        while parent in nodes:
            parent = nodes[parent].parent
        return parent

    trees: dict[str, set[str]] = defaultdict(set)
    for digest in nodes:
        trees[root(digest)].add(digest)
    forks = []
    for top, members in sorted(trees.items()):
        branch_points = sorted(p for p in {top, *members} if len(children.get(p, ())) > 1)
        if not branch_points:
            continue
        mu = math.sqrt(math.fsum(nodes[d].mu ** 2 for d in members))
        delta = max(nodes[d].delta for d in members)
        certificates = sorted(path for path, links in chains.items()
                              if links and links[-1].digest in members)
        forks.append(Fork(certificates, branch_points, len(members), gdp_epsilon(mu, delta),
                          delta))
    return forks
