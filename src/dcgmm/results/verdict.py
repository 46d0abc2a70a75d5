"""Plain-words verdicts on the paper's claims from the rows of a results table.

The paper claims that DCGMMs beat flat GMMs at clustering, sampling and outlier detection. For
every DCGMM row of a dataset and every row compared with it (:data:`COMPARED`: the flat GMM with
the same top-layer K, the flat GMM with about as many parameters, EM with the same K), each claim
that counts the pair (:data:`COUNTED`: clustering only with the same K) gets one word:

* **better** / **worse**: the DCGMM's value differs from the flat GMM's by more than the margin,
  in the claim's good / bad direction;
* **equal**: the difference lies within the margin;
* **not measured**: a value is missing (a run has not finished or does not exist);
* **not applicable**: the compared row cannot have the metric (a probabilistic circuit has no
  cluster ids; the row lists it in ``not_applicable``);
* **not counted**: the claim does not count this pair (:data:`COUNTED`).

Every DCGMM row is also compared with the peer rows of its dataset (:data:`PEERS`: the circuit,
row id ``"circuit"``), summarised in a line of their own.

The margin is twice the noise of the difference, ``2 * sqrt(sd_dcgmm^2 + sd_flat^2)`` with the
standard deviations over each row's seeds, but never less than the claim's floor (:data:`CLAIMS`),
which stands in for the noise where a row has a single seed. The metrics:

* clustering: NMI of the top GMM layer's clusters against the labels (higher is better);
* sampling: NDB/B of samples with the learned spread (lower is better), and NDB/B of the kept
  models' samples under the authors' sampler (``mode=samples``; its noise is the kept models' spread
  over seeds, or while no row has two kept models the learned sampler's pooled seed spread,
  :attr:`Claim.borrow`);
* outlier detection: AUROC of each held-out class by the top layer's objective (higher is better),
  compared class by class over the classes both rows hold out (:func:`compare_classes`): the
  noise of the mean difference is the class-to-class spread of the differences, or with a single
  class the seeds' spread.

A pair of runs counts once per claim: a compared row whose runs another comparison of the same
DCGMM row already counted (e.g. a flat GMM with as many parameters that has the same K) is "not
counted".

A row is a mapping as written by :func:`dcgmm.results.report.row_values`: ``row_id``
(``"dcgmm2"`` for a DCGMM row, ``"flat_same_k:dcgmm2"`` / ``"flat_same_params:dcgmm2"`` for its
flat GMMs), ``label``, and per metric its mean and ``<metric>_sd``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CLAIMS", "Claim", "Comparison", "compare", "compare_classes", "pooled_spread", "verdicts", "verdict_markdown"]


@dataclass(frozen=True)
class Claim:
    name: str  # "clustering", ...
    metric: str  # key in a row
    label: str  # how the metric is named in the text
    sign: int  # +1: higher is better, -1: lower is better
    floor: float  # smallest margin (stands in for the noise of single-seed rows)
    borrow: str | None = None  # a metric whose pooled seed spread stands in when this one has none


CLAIMS = (
    Claim("clustering", "nmi", "NMI", +1, 0.01),
    Claim("sampling", "ndb_ratio", "NDB/B", -1, 0.05),
    Claim("sampling, the authors' sampler", "ndb_authors", "NDB/B", -1, 0.05, borrow="ndb_ratio"),
    Claim("outlier detection", "auroc", "AUROC", +1, 0.005),
)
COMPARED = (("flat_same_k", "the flat GMM with the same K"), ("flat_same_params", "the flat GMM with as many parameters"),
            ("em_same_k", "EM with the same K"))
# the comparisons each claim counts: NMI, ARI and purity move with the number of clusters, so
# clustering is compared like for like (the same K: the flat GMM trained by SGD and EM); sampling
# and outlier detection compare the densities, with the same K and with as many parameters
COUNTED = {"clustering": ("flat_same_k", "em_same_k"), "sampling": ("flat_same_k", "flat_same_params"),
           "sampling, the authors' sampler": ("flat_same_k", "flat_same_params"), "outlier detection": ("flat_same_k", "flat_same_params")}
OTHERS = {"clustering": "the flat GMM and EM with the same K", "sampling": "the flat GMM", "sampling, the authors' sampler": "the flat GMM",
          "outlier detection": "the flat GMM"}
# peer rows, one per dataset (not per topology): every DCGMM row is compared with each
PEERS = (("circuit", "the probabilistic circuit"),)


@dataclass(frozen=True)
class Comparison:
    claim: Claim
    verdict: str  # better | equal | worse | not measured | not applicable | not counted (COUNTED, or runs counted already)
    dcgmm: float | None = None
    flat: float | None = None
    margin: float | None = None
    seeds: tuple[int, int] = (0, 0)
    basis: str = ""  # what the margin's noise comes from, when not the seeds
    reason: str = ""  # why a comparison is not counted

    @property
    def difference(self) -> float | None:
        return None if self.dcgmm is None or self.flat is None else self.dcgmm - self.flat

    def text(self) -> str:
        if self.verdict == "not measured":
            return f"{self.claim.name}: not measured yet"
        if self.verdict == "not applicable":
            return f"{self.claim.name}: not applicable"
        if self.verdict == "not counted":
            reason = self.reason or ("another number of clusters" if self.claim.name == "clustering" else "")
            return f"{self.claim.name}: not counted" + (f" ({reason})" if reason else "")
        basis = self.basis or f"seeds {self.seeds[0]} and {self.seeds[1]}"
        return (
            f"{self.claim.name} **{self.verdict}** ({self.claim.label} {self.dcgmm:.3f} vs {self.flat:.3f}, "
            f"difference {self.difference:+.3f}, margin {self.margin:.3f}; {basis})"
        )


def _known(value) -> bool:
    return value is not None and math.isfinite(float(value))


def _per_class(value) -> dict[int, float]:
    """A per-class mapping (JSON turns its keys into strings) with int keys, known values only."""
    return {int(c): float(v) for c, v in (value or {}).items() if _known(v)}


def pooled_spread(rows: Sequence[Mapping]) -> dict[str, float]:
    """Per claim metric, the seed-to-seed standard deviation pooled over the rows that have one
    (rows with two or more seeds; for AUROC, every held-out class with two or more seeds):
    ``sqrt(mean(sd^2))``. Rows with a single seed borrow it."""
    pooled = {}
    for claim in CLAIMS:
        sds = []
        for row in rows:
            sd = row.get(f"{claim.metric}_sd")
            sds += list(_per_class(sd).values()) if isinstance(sd, Mapping) else [float(sd)] if _known(sd) else []
        if sds:
            pooled[claim.metric] = math.sqrt(sum(sd * sd for sd in sds) / len(sds))
    return pooled


def compare_classes(dcgmm: Mapping, flat: Mapping, claim: Claim, pooled: Mapping[str, float] | None = None) -> Comparison:
    """A per-class metric (AUROC by held-out class), paired by class: the mean difference over the
    classes both rows hold out. With two or more such classes its noise is the standard deviation
    of the per-class differences over sqrt(n) (the class-to-class spread); with one, the seeds'
    spread at that class as in :func:`compare`."""
    a, b = _per_class(dcgmm.get(claim.metric)), _per_class(flat.get(claim.metric))
    common = sorted(set(a) & set(b))
    if not common:
        return Comparison(claim, "not measured")
    n = len(common)
    mean_a, mean_b = sum(a[c] for c in common) / n, sum(b[c] for c in common) / n
    if n >= 2:
        noise = statistics.stdev(a[c] - b[c] for c in common) / math.sqrt(n)
        basis = f"{n} held-out classes, paired; noise: the class-to-class spread of the differences"
    else:
        borrowed = (pooled or {}).get(claim.metric, 0.0)
        sds = [_per_class(row.get(f"{claim.metric}_sd")).get(common[0]) for row in (dcgmm, flat)]
        noise = math.sqrt(sum((sd if sd is not None else borrowed) ** 2 for sd in sds))
        seeds = [_per_class(row.get(f"{claim.metric}_seeds")).get(common[0]) for row in (dcgmm, flat)]
        basis = f"class {common[0]} only" + ("" if None in seeds else f"; seeds {int(seeds[0])} and {int(seeds[1])}")
    margin, verdict = judge(claim, mean_a, mean_b, noise)
    return Comparison(claim, verdict, mean_a, mean_b, margin, basis=basis)


def judge(claim: Claim, dcgmm: float, flat: float, noise: float) -> tuple[float, str]:
    """``(margin, verdict)``: the margin is twice the noise and at least the claim's floor."""
    margin = max(2.0 * noise, claim.floor)
    gain = claim.sign * (dcgmm - flat)
    return margin, "better" if gain > margin else "worse" if gain < -margin else "equal"


def compare(dcgmm: Mapping, flat: Mapping, claim: Claim, pooled: Mapping[str, float] | None = None) -> Comparison:
    """One claim for one pair of rows (see the module docstring for the rule); a row without its
    own spread over seeds takes ``pooled[metric]`` (:func:`pooled_spread`) when given."""
    a, b = dcgmm.get(claim.metric), flat.get(claim.metric)
    if claim.metric in (flat.get("not_applicable") or ()):  # e.g. a circuit has no clusters
        return Comparison(claim, "not applicable")
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return compare_classes(dcgmm, flat, claim, pooled)
    if not (_known(a) and _known(b)):
        return Comparison(claim, "not measured")
    borrowed = (pooled or {}).get(claim.metric, (pooled or {}).get(claim.borrow, 0.0))
    sd_a, sd_b = (row.get(f"{claim.metric}_sd") for row in (dcgmm, flat))
    noise = math.sqrt((sd_a if _known(sd_a) else borrowed) ** 2 + (sd_b if _known(sd_b) else borrowed) ** 2)
    margin, verdict = judge(claim, float(a), float(b), noise)
    def seeds(row: Mapping) -> int:  # seeds behind this metric (e.g. the outlier runs'), else the row's
        return int(row.get(f"{claim.metric}_n", row.get("seeds")) or 0)

    basis = ""
    if claim.borrow and claim.metric not in (pooled or {}) and claim.borrow in (pooled or {}) and not (_known(sd_a) and _known(sd_b)):
        basis = f"models {seeds(dcgmm)} and {seeds(flat)}; noise: the pooled seed spread of {claim.borrow}"
    return Comparison(claim, verdict, float(a), float(b), margin, (seeds(dcgmm), seeds(flat)), basis=basis)


def verdicts(rows: Sequence[Mapping], pooled: Mapping[str, float] | None = None) -> list[tuple[Mapping, Mapping, str, list[Comparison]]]:
    """``(DCGMM row, flat row, what the flat row is, comparisons per claim)`` for one dataset."""
    by_id = {row["row_id"]: row for row in rows}
    out = []
    for row in rows:
        if ":" in row["row_id"] or row.get("method") != "sgd":
            continue  # flat GMM and EM rows are what DCGMM rows are compared with
        counted: dict[tuple, str] = {}  # (claim, the compared row's runs) -> what counted them: each pair of runs counts once
        for prefix, what in COMPARED:
            flat = by_id.get(f"{prefix}:{row['row_id']}")
            if flat is None:
                continue
            comparisons = []
            for claim in CLAIMS:
                runs = (claim.name, tuple(flat.get("runs_outliers" if claim.metric == "auroc" else "runs_main") or ()))
                if prefix not in COUNTED[claim.name]:
                    comparisons.append(Comparison(claim, "not counted"))
                elif runs[1] and runs in counted:
                    comparisons.append(Comparison(claim, "not counted", reason=f"the same runs as {counted[runs]}"))
                else:
                    counted[runs] = what
                    comparisons.append(compare(row, flat, claim, pooled))
            out.append((row, flat, what, comparisons))
        for peer, what in PEERS:
            if peer in by_id:
                out.append((row, by_id[peer], what, [compare(row, by_id[peer], claim, pooled) for claim in CLAIMS]))
    return out


def _summary(words: list[str], other: str) -> str:
    """One claim's verdicts against ``other`` ("the flat GMM") in plain words."""
    if words and all(w == "not applicable" for w in words):
        return f"not applicable to {other}"
    measured = [w for w in words if w in ("better", "equal", "worse")]
    if not measured:
        return "not measured yet"
    counts = {w: measured.count(w) for w in ("better", "equal", "worse")}
    if counts["better"] == len(measured):
        head = f"DCGMM better than {other} in every comparison"
    elif counts["worse"] == len(measured):
        head = f"DCGMM worse than {other} in every comparison: the claim does not hold here"
    elif counts["better"] == 0 and counts["worse"] == 0:
        head = f"DCGMM and {other} equal within the noise"
    elif counts["worse"] == 0:
        head = f"DCGMM better than or equal to {other}"
    elif counts["better"] == 0:
        head = f"DCGMM worse than or equal to {other}"
    else:
        head = "mixed"
    pending = sum(1 for w in words if w == "not measured")
    return f"{head} ({counts['better']} better, {counts['equal']} equal, {counts['worse']} worse of {len(measured)} measured" + (
        f"; {pending} not measured yet)" if pending else ")"
    )


def verdict_markdown(dataset_title: str, rows: Sequence[Mapping], pooled: Mapping[str, float] | None = None) -> list[str]:
    """Markdown lines: a summary per claim, then every comparison with its numbers."""
    found = verdicts(rows, pooled)
    if not found:
        return [f"### {dataset_title}", "", "No DCGMM row with a flat GMM to compare.", ""]
    lines = [f"### {dataset_title}", ""]
    peers = {what for _, what in PEERS}
    flat_found = [f for f in found if f[2] not in peers]
    for index, claim in enumerate(CLAIMS):
        words = [comparisons[index].verdict for _, _, _, comparisons in flat_found if comparisons[index].verdict != "not counted"]
        lines.append(f"- **{claim.name.capitalize()}** ({claim.label}): {_summary(words, OTHERS[claim.name])}.")
    for _, what in PEERS:
        against = [f for f in found if f[2] == what]
        if against:
            parts = [f"{claim.name} ({claim.label}) {_summary([c[3][i].verdict for c in against], 'the circuit')}" for i, claim in enumerate(CLAIMS)]
            lines.append(f"- **Against {what}** ({against[0][1]['label']}): " + "; ".join(parts) + ".")
    lines.append("")
    for row, flat, what, comparisons in found:
        shown = [c.text() for c in comparisons if c.verdict != "not counted" or c.claim.name == "clustering" or c.reason]
        lines.append(f"- {row['label']} against {what} ({flat['label']}): " + "; ".join(shown) + ".")
    lines.append("")
    return lines
