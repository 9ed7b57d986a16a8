"""Exact toy model of the paper's Theorem 4.2: spectra of (context, target) co-occurrence matrices.

The paper ("Look Ahead or Look Around?", Zhang et al., ICML 2024) views a generative SSL objective as a
matrix factorisation of the co-occurrence matrix ``A[context, target]`` and ties linear-probe accuracy to
its normalised spectrum. This module builds that matrix *exactly* (by enumeration, no sampling) for a small
synthetic language (``K`` classes with disjoint vocabularies of ``m`` tokens, sequences of length ``n``) and
compares the objectives ``"ar"``, ``"semi_ar"`` (group size ``g``), ``"masked"`` (a fixed count of masked
positions) and ``"masked_bernoulli"`` on ``sigma_{K+1}``, the first singular value after the ``K`` class
directions of the normalised matrix ``D_c^{-1/2} A D_t^{-1/2}``.

What it shows: ``sigma_{K+1}`` is exactly 1 for AR and semi-AR (two groups or more) and
``sqrt((n - M) / (M (n - 1))) <= 1`` for ``M`` masked positions, the paper's ordering; but semi-AR only ties AR,
and "every singular value of the masked matrix is smaller" fails in the tail. The data model, the pair weights,
why ``sigma_{K+1}`` is the quantity compared, and the derivations are in ``docs/theory.md`` (in the repository);
``tests/test_theory.py`` checks them.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "OBJECTIVES",
    "cooccurrence_matrix",
    "format_table",
    "main",
    "masked_sigma_closed_form",
    "normalized",
    "num_masked",
    "plot_spectra",
    "singular_values",
    "spectrum_grid",
    "summarize_spectrum",
]

OBJECTIVES = ("ar", "semi_ar", "masked", "masked_bernoulli")
#: Largest number of (sequence, mask) enumeration steps we accept (keeps a call well under a second or so).
MAX_ENUMERATION = 3_000_000
UNIT_TOL = 1e-9

Context = tuple[tuple[int, int], ...]
Target = tuple[int, int]


def num_masked(r: float, n: int) -> int:
    """Number of masked positions of the fixed-ratio objective: ``r*n`` rounded half up, clipped to ``[1, n]``."""
    return int(min(n, max(1, math.floor(r * n + 0.5 + 1e-9))))


def masked_sigma_closed_form(n: int, M: int) -> float:
    """``sigma_{K+1}`` of the fixed-count masked objective, in closed form.

    Per class the (normalised) matrix is, up to rank-one token factors, the inclusion matrix ``B`` of the
    ``M``-subsets ``S`` of ``{0..n-1}`` (masked sets) against the positions ``j in S``, with row degree ``M``
    and column degree ``C(n-1, M-1)``.  ``B^T B`` has ``C(n-1, M-1)`` on the diagonal and ``C(n-2, M-2)``
    off it, so its eigenvalues are ``M C(n-1, M-1)`` (all-ones vector) and ``C(n-2, M-1)`` (multiplicity
    ``n-1``).  Dividing by the degrees gives singular values ``1`` and ``sqrt((n - M) / (M (n - 1)))``.
    """
    _check_n(n)
    if not 1 <= M <= n:
        raise ValueError(f"M (number of masked positions) must be in [1, n={n}], got {M}")
    return math.sqrt((n - M) / (M * (n - 1)))


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n (sequence length) must be an integer >= 2, got {n!r}")


def _validate(objective: str, K: int, n: int, m: int, r: float | None, g: int | None) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"K (number of classes) must be an integer >= 1, got {K!r}")
    _check_n(n)
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m (tokens per class) must be an integer >= 1, got {m!r}")
    if objective in ("masked", "masked_bernoulli"):
        if r is None:
            raise ValueError(f"objective {objective!r} needs a mask ratio r in (0, 1]")
        if g is not None:
            raise ValueError(f"g (group size) does not apply to objective {objective!r}")
        if not (isinstance(r, (int, float, np.floating)) and not isinstance(r, bool) and 0.0 < float(r) <= 1.0):
            raise ValueError(f"mask ratio r must be in (0, 1], got {r!r}")
    else:
        if r is not None:
            raise ValueError(f"r (mask ratio) does not apply to objective {objective!r}")
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, np.integer)) or g < 1):
            raise ValueError(f"group size g must be an integer >= 1, got {g!r}")
        if objective == "ar" and g not in (None, 1):
            raise ValueError(f"objective 'ar' is semi_ar with g=1; got g={g!r} (use objective='semi_ar')")
        if objective == "semi_ar" and g is None:
            raise ValueError("objective 'semi_ar' needs a group size g >= 1")
    steps = K * m**n * (2**n if objective.startswith("masked") else 1)
    if steps > MAX_ENUMERATION:
        raise ValueError(
            f"exact enumeration too large: K*m^n*(masks) = {steps} > {MAX_ENUMERATION}; use smaller K, m or n"
        )


def _pairs_per_sequence(
    objective: str, n: int, r: float | None, g: int | None
) -> list[tuple[tuple[int, ...], int, float]]:
    """The objective's (visible positions, target position, weight) triples, the same for every sequence.

    Weights sum to 1 over the list (they are the pair probabilities given the sequence).
    """
    out: list[tuple[tuple[int, ...], int, float]] = []
    if objective in ("ar", "semi_ar"):
        size = 1 if objective == "ar" else int(g)  # type: ignore[arg-type]
        for t in range(n):
            start = (t // size) * size  # first position of t's group
            out.append((tuple(range(start)), t, 1.0 / n))
        return out
    r = float(r)  # type: ignore[arg-type]
    if objective == "masked":
        M = num_masked(r, n)
        masks = list(itertools.combinations(range(n), M))
        for S in masks:
            visible = tuple(p for p in range(n) if p not in S)
            for j in S:
                out.append((visible, j, 1.0 / (len(masks) * M)))
        return out
    # masked_bernoulli: P(S | S non-empty) / E[|S| | S non-empty] per (S, j in S)
    p_nonempty = 1.0 - (1.0 - r) ** n
    expected_size = n * r / p_nonempty
    for size in range(1, n + 1):
        p_S = r**size * (1.0 - r) ** (n - size) / p_nonempty
        if p_S == 0.0:
            continue
        for S in itertools.combinations(range(n), size):
            visible = tuple(p for p in range(n) if p not in S)
            for j in S:
                out.append((visible, j, p_S / expected_size))
    return out


def cooccurrence_matrix(
    objective: str,
    K: int,
    n: int,
    m: int = 2,
    r: float | None = None,
    g: int | None = None,
) -> tuple[np.ndarray, list[Context], list[Target]]:
    """Exact joint probability ``A[context, target]`` of an objective's (context, target) pairs.

    Args:
        objective: ``"ar"``, ``"semi_ar"`` (needs ``g``), ``"masked"`` (fixed count ``round(r*n)``, needs ``r``)
            or ``"masked_bernoulli"`` (i.i.d. Bernoulli(r) mask conditioned on being non-empty, needs ``r``).
        K: number of classes (disjoint vocabularies of ``m`` tokens each).
        n: sequence length (>= 2).
        m: tokens per class.
        r: mask ratio in ``(0, 1]`` for the masked objectives.
        g: group size (>= 1) for ``semi_ar``; ``g=1`` is AR.

    Returns:
        ``(A, context_labels, target_labels)``: ``A`` is a dense ``(num_contexts, num_targets)`` float64
        array summing to 1; a context label is a tuple of ``(position, token)`` pairs (``()`` is the empty
        context), a target label a ``(position, token)`` pair.  Labels are sorted (contexts by length then
        lexicographically, targets lexicographically), so the layout is deterministic.

    Raises:
        ValueError: on an unknown objective, ``n < 2``, ``r`` outside ``(0, 1]``, ``g < 1``, missing or
            inapplicable ``r``/``g``, or an enumeration too large to be exact and fast.
    """
    _validate(objective, K, n, m, r, g)
    # group the pairs by visible set: one context tuple per (sequence, visible set)
    by_visible: dict[tuple[int, ...], list[tuple[int, float]]] = {}
    for visible, j, w in _pairs_per_sequence(objective, n, r, g):
        by_visible.setdefault(visible, []).append((j, w))
    mass: dict[tuple[Context, Target], float] = {}
    p_seq = 1.0 / (K * m**n)
    for k in range(K):
        tokens = range(k * m, k * m + m)
        for seq in itertools.product(tokens, repeat=n):  # every sequence of class k, probability p_seq
            for visible, targets in by_visible.items():
                context = tuple((p, seq[p]) for p in visible)
                for j, w in targets:
                    key = (context, (j, seq[j]))
                    mass[key] = mass.get(key, 0.0) + p_seq * w
    contexts = sorted({c for c, _ in mass}, key=lambda c: (len(c), c))
    targets = sorted({t for _, t in mass})
    c_index = {c: i for i, c in enumerate(contexts)}
    t_index = {t: i for i, t in enumerate(targets)}
    A = np.zeros((len(contexts), len(targets)))
    for (c, t), v in mass.items():
        A[c_index[c], t_index[t]] = v
    return A, contexts, targets


def normalized(A: np.ndarray) -> np.ndarray:
    """``D_c^{-1/2} A D_t^{-1/2}`` with ``D_c``/``D_t`` the row/column sums (zero rows/columns stay zero)."""
    A = np.asarray(A, dtype=float)
    if A.ndim != 2:
        raise ValueError(f"A must be a 2-D matrix, got shape {A.shape}")
    if np.any(A < 0):
        raise ValueError("A must be non-negative")
    dc, dt = A.sum(axis=1), A.sum(axis=0)
    inv_c = np.divide(1.0, np.sqrt(dc), out=np.zeros_like(dc), where=dc > 0)
    inv_t = np.divide(1.0, np.sqrt(dt), out=np.zeros_like(dt), where=dt > 0)
    return inv_c[:, None] * A * inv_t[None, :]


def _svals(B: np.ndarray) -> np.ndarray:
    """Descending singular values of ``B``, with single-threaded BLAS.

    The matrices here are at most a few thousand by a few dozen: multi-threaded OpenBLAS only adds
    contention (5x slower on a loaded 2-core machine), so we pin it to one thread when threadpoolctl is
    installed (it comes with scikit-learn, the ``eval`` extra).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        limit = contextlib.nullcontext()
    else:
        limit = threadpool_limits(limits=1, user_api="blas")
    with limit:
        s = np.linalg.svd(B, compute_uv=False)
    return np.sort(s)[::-1]


def singular_values(
    objective: str,
    K: int,
    n: int,
    m: int = 2,
    r: float | None = None,
    g: int | None = None,
) -> np.ndarray:
    """All singular values (descending, ``min(#contexts, #targets)`` of them) of the normalised matrix.

    Arguments as in :func:`cooccurrence_matrix`.  ``s[0] == 1`` always; ``s[K]`` is ``sigma_{K+1}``.
    """
    A, _, _ = cooccurrence_matrix(objective, K, n, m=m, r=r, g=g)
    return _svals(normalized(A))


def summarize_spectrum(s: np.ndarray, K: int, tol: float = UNIT_TOL) -> dict:
    """Spectrum summary used by the grid: class block, ``sigma_{K+1}``, components, rank, top values."""
    s = np.asarray(s, dtype=float)

    def pad(i: int) -> float:  # sigma_i, or 0 past the end of the spectrum
        return float(s[i]) if i < len(s) else 0.0

    return {
        "sigma_class": [pad(i) for i in range(1, K)],  # sigma_2 .. sigma_K
        "sigma_K": pad(K - 1),
        "sigma_K1": pad(K),  # sigma_{K+1}: the compared quantity
        "n_unit": int(np.sum(s >= 1.0 - tol)),  # = number of connected components of the pair graph
        "rank": int(np.sum(s > tol)),
        "sum_sq_after_K": float(np.sum(s[K:] ** 2)),
        "top": [float(x) for x in s[: 2 * K + 4]],
    }


def spectrum_grid(
    Ks: Iterable[int],
    ns: Iterable[int],
    rs: Iterable[float],
    gs: Iterable[int],
    m: int = 2,
    masked_objectives: Sequence[str] = ("masked", "masked_bernoulli"),
) -> list[dict]:
    """Spectra of every objective over a grid.

    For each ``(K, n)``: one row per semi-AR group size in ``gs`` (``g=1`` is reported as ``"ar"``) and one
    row per ``r`` in ``rs`` for each of ``masked_objectives``.  Every row holds ``K, n, m, objective, r, g,
    M`` (masked positions for ``"masked"``, else ``None``), ``n_contexts``, ``n_targets``, ``closed_form``
    (``sigma_{K+1}`` predicted in closed form where we have it, else ``None``), ``seconds`` and the keys of
    :func:`summarize_spectrum`.
    """
    rows: list[dict] = []
    for K in Ks:
        for n in ns:
            specs: list[tuple[str, float | None, int | None]] = []
            for g in gs:
                specs.append(("ar", None, None) if g == 1 else ("semi_ar", None, int(g)))
            for obj in masked_objectives:
                for r in rs:
                    specs.append((obj, float(r), None))
            for obj, r, g in specs:
                t0 = time.perf_counter()
                A, contexts, targets = cooccurrence_matrix(obj, K, n, m=m, r=r, g=g)
                s = _svals(normalized(A))
                M = num_masked(r, n) if obj == "masked" else None
                if obj == "masked":
                    closed = masked_sigma_closed_form(n, M) if M < n else 0.0
                elif obj == "ar" or (obj == "semi_ar" and math.ceil(n / g) >= 2):
                    closed = 1.0
                else:
                    closed = None
                row = {
                    "K": int(K),
                    "n": int(n),
                    "m": int(m),
                    "objective": obj,
                    "r": r,
                    "g": 1 if obj == "ar" else g,
                    "M": M,
                    "n_contexts": len(contexts),
                    "n_targets": len(targets),
                    "closed_form": closed,
                }
                row.update(summarize_spectrum(s, K))
                row["seconds"] = time.perf_counter() - t0
                rows.append(row)
    return rows


def plot_spectra(rows: Sequence[dict], path: str | Path) -> Path:
    """Write a PNG: per ``(K, n)``, masked ``sigma_{K+1}`` (top) and unit-singular-value count (bottom) vs ``r``.

    AR and semi-AR (g=2) appear as horizontal reference lines (on ``sigma_{K+1}`` both are exactly 1, so
    their lines coincide; the bottom panel separates them).  The dotted line in the top panel is the
    Bernoulli-mask ``sigma_K`` (smallest class singular value; 1 for the fixed-count mask below r=1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    keys = sorted({(row["K"], row["n"]) for row in rows})
    if not keys:
        raise ValueError("no rows to plot")
    fig, axes = plt.subplots(2, len(keys), figsize=(3.6 * len(keys), 6.4), squeeze=False, sharex=True)
    for col, (K, n) in enumerate(keys):
        sub = [row for row in rows if (row["K"], row["n"]) == (K, n)]
        top, bottom = axes[0][col], axes[1][col]
        for obj, style, label in (
            ("masked", "o-", "masked, fixed count"),
            ("masked_bernoulli", "s--", "masked, Bernoulli"),
        ):
            pts = sorted((row["r"], row) for row in sub if row["objective"] == obj)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            top.plot(xs, [p[1]["sigma_K1"] for p in pts], style, ms=4, label=label)
            bottom.plot(xs, [p[1]["n_unit"] for p in pts], style, ms=4, label=label)
            if obj == "masked_bernoulli" and K > 1:
                top.plot(xs, [p[1]["sigma_K"] for p in pts], ":", color="gray", label=r"Bernoulli $\sigma_K$ (class)")
        for obj, g, color, ls, label in (
            ("ar", 1, "black", "-", "AR"),
            ("semi_ar", 2, "tab:red", (0, (4, 3)), "semi-AR g=2"),
        ):
            ref = [row for row in sub if row["objective"] == obj and row["g"] == g]
            if ref:
                top.axhline(ref[0]["sigma_K1"], color=color, ls=ls, lw=1.5, label=label)
                bottom.axhline(ref[0]["n_unit"], color=color, ls=ls, lw=1.5, label=label)
        top.set_title(f"K={K}, n={n}")
        top.set_ylim(-0.05, 1.08)
        bottom.set_xlabel("mask ratio r")
        if col == 0:
            top.set_ylabel(r"$\sigma_{K+1}$ of normalised $A$")
            bottom.set_ylabel("# singular values = 1\n(connected components)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "Exact co-occurrence spectra (Theorem 4.2 toy model): smaller $\\sigma_{K+1}$ = better connected classes"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(rows: Sequence[dict]) -> str:
    """Plain-text table of the grid rows."""
    head = (
        f"{'K':>2} {'n':>2} {'objective':<17}{'r':>5} {'g':>2} {'M':>2} {'ctx':>5} {'rank':>4} {'#1s':>4}"
        f" {'sig_K':>6} {'sig_K+1':>7} {'closed':>6}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        r = "" if row["r"] is None else f"{row['r']:.2f}"
        g = "" if row["g"] is None else str(row["g"])
        M = "" if row["M"] is None else str(row["M"])
        closed = "" if row["closed_form"] is None else f"{row['closed_form']:.4f}"
        lines.append(
            f"{row['K']:>2} {row['n']:>2} {row['objective']:<17}{r:>5} {g:>2} {M:>2} {row['n_contexts']:>5}"
            f" {row['rank']:>4} {row['n_unit']:>4} {row['sigma_K']:>6.4f} {row['sigma_K1']:>7.4f} {closed:>6}"
        )
    return "\n".join(lines)


DEFAULT_KS = (2, 3, 4)
DEFAULT_NS = (4, 6)
DEFAULT_RS = (0.15, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0)
DEFAULT_GS = (1, 2, 3)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hf_genssl.theory --out DIR``: compute a grid, write ``theory_spectra.{json,png}``, print a table."""
    parser = argparse.ArgumentParser(prog="python -m hf_genssl.theory", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--Ks", type=int, nargs="+", default=list(DEFAULT_KS))
    parser.add_argument("--ns", type=int, nargs="+", default=list(DEFAULT_NS))
    parser.add_argument("--rs", type=float, nargs="+", default=list(DEFAULT_RS))
    parser.add_argument("--gs", type=int, nargs="+", default=list(DEFAULT_GS))
    parser.add_argument("--m", type=int, default=2, help="tokens per class")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = spectrum_grid(args.Ks, args.ns, args.rs, args.gs, m=args.m)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "grid": {"Ks": args.Ks, "ns": args.ns, "rs": args.rs, "gs": args.gs, "m": args.m},
        "compared_quantity": "sigma_K1 = (K+1)-th singular value of D_c^-1/2 A D_t^-1/2 (smaller = better connected)",
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    (out / "theory_spectra.json").write_text(json.dumps(meta, indent=1))
    plot_spectra(rows, out / "theory_spectra.png")
    print(format_table(rows))
    print(
        f"\n{len(rows)} rows in {time.perf_counter() - t0:.1f} s -> {out / 'theory_spectra.json'}, "
        f"{out / 'theory_spectra.png'}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
