"""Exact co-occurrence spectra of the Theorem 4.2 toy model (hf_genssl.theory)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from hf_genssl.theory import (
    cooccurrence_matrix,
    format_table,
    main,
    masked_sigma_closed_form,
    normalized,
    num_masked,
    plot_spectra,
    singular_values,
    spectrum_grid,
)

RS = (0.1, 0.2, 0.25, 0.34, 0.4, 0.5, 0.6, 0.67, 0.75, 0.8, 0.9, 1.0)


def sigma_K1(objective, K, n, m=2, r=None, g=None) -> float:
    s = singular_values(objective, K, n, m=m, r=r, g=g)
    return float(s[K]) if len(s) > K else 0.0


def n_unit(objective, K, n, m=2, r=None, g=None) -> int:
    return int(np.sum(singular_values(objective, K, n, m=m, r=r, g=g) >= 1 - 1e-9))


# (a) hand-derived smallest cases -----------------------------------------------------------------------------


def test_ar_by_hand_K2_m2_n2():
    # Class 0 owns tokens {0, 1}, class 1 owns {2, 3}. 8 sequences, each of probability 1/8; 2 pairs each (1/2).
    # t=0: context () -> target (0, x0): mass 1/8 per token.  t=1: context ((0, x0),) -> (1, x1): 1/16.
    A, ctx, tgt = cooccurrence_matrix("ar", K=2, n=2, m=2)
    assert ctx == [(), ((0, 0),), ((0, 1),), ((0, 2),), ((0, 3),)]
    assert tgt == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    e, q = 1 / 8, 1 / 16
    expected = np.array(
        [
            [e, e, e, e, 0, 0, 0, 0],
            [0, 0, 0, 0, q, q, 0, 0],
            [0, 0, 0, 0, q, q, 0, 0],
            [0, 0, 0, 0, 0, 0, q, q],
            [0, 0, 0, 0, 0, 0, q, q],
        ]
    )
    np.testing.assert_allclose(A, expected, atol=1e-15)
    # D_c = (1/2, 1/8, 1/8, 1/8, 1/8), D_t = 1/8: every non-zero normalised entry is 1/2.
    np.testing.assert_allclose(normalized(A), (expected > 0) * 0.5, atol=1e-15)
    # Three rank-one blocks (the empty context; class 0 at t=1; class 1 at t=1) with unit norm: 1, 1, 1, 0, 0.
    np.testing.assert_allclose(singular_values("ar", 2, 2, m=2), [1, 1, 1, 0, 0], atol=1e-12)


def test_masked_by_hand_K2_m1_n3_two_masked():
    # Tokens: class 0 -> 0, class 1 -> 1 (sequences 000 and 111, probability 1/2 each).  r=2/3 -> M=2:
    # masks {0,1},{0,2},{1,2} (1/3 each), 2 targets each (1/2): every pair has mass 1/2 * 1/3 * 1/2 = 1/12.
    assert num_masked(2 / 3, 3) == 2
    A, ctx, tgt = cooccurrence_matrix("masked", K=2, n=3, m=1, r=2 / 3)
    assert ctx == [((0, 0),), ((0, 1),), ((1, 0),), ((1, 1),), ((2, 0),), ((2, 1),)]
    assert tgt == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    w = 1 / 12
    expected = w * np.array(
        [
            [0, 0, 1, 0, 1, 0],  # sees position 0 (token 0) -> predicts positions 1, 2 of class 0
            [0, 0, 0, 1, 0, 1],
            [1, 0, 0, 0, 1, 0],
            [0, 1, 0, 0, 0, 1],
            [1, 0, 1, 0, 0, 0],
            [0, 1, 0, 1, 0, 0],
        ]
    )
    np.testing.assert_allclose(A, expected, atol=1e-15)
    # D_c = D_t = 1/6, so A_norm = 6 A: per class (J - I)/2 with eigenvalues 1, -1/2, -1/2.
    np.testing.assert_allclose(normalized(A), 6 * expected, atol=1e-15)
    np.testing.assert_allclose(singular_values("masked", 2, 3, m=1, r=2 / 3), [1, 1, 0.5, 0.5, 0.5, 0.5], atol=1e-12)
    assert masked_sigma_closed_form(3, 2) == pytest.approx(0.5)


def test_masked_bernoulli_by_hand_K2_m1_n2_half():
    # Non-empty masks {0},{1},{0,1}: 1/3 each; E|S| = 4/3, so each (mask, target) pair weighs 1/4 per sequence.
    A, ctx, tgt = cooccurrence_matrix("masked_bernoulli", K=2, n=2, m=1, r=0.5)
    assert ctx == [(), ((0, 0),), ((0, 1),), ((1, 0),), ((1, 1),)]
    assert tgt == [(0, 0), (0, 1), (1, 0), (1, 1)]
    e = 1 / 8
    expected = np.array(
        [
            [e, e, e, e],  # all masked: the empty context links both classes
            [0, 0, e, 0],
            [0, 0, 0, e],
            [e, 0, 0, 0],
            [0, e, 0, 0],
        ]
    )
    np.testing.assert_allclose(A, expected, atol=1e-15)
    # A_norm^T A_norm = I/2 + J/8: eigenvalues 1 and 1/2 (x3) -> singular values 1, 1/sqrt2, 1/sqrt2, 1/sqrt2.
    h = 1 / math.sqrt(2)
    np.testing.assert_allclose(singular_values("masked_bernoulli", 2, 2, m=1, r=0.5), [1, h, h, h], atol=1e-12)


def test_closed_forms_match_enumeration():
    for K in (2, 3):
        for n in (3, 4, 5):
            G2 = math.ceil(n / 2)
            s_ar = singular_values("ar", K, n)
            np.testing.assert_allclose(s_ar, (np.arange(len(s_ar)) < 1 + (n - 1) * K).astype(float), atol=1e-10)
            s_semi = singular_values("semi_ar", K, n, g=2)
            np.testing.assert_allclose(s_semi, (np.arange(len(s_semi)) < 1 + (G2 - 1) * K).astype(float), atol=1e-10)
            for M in range(1, n):
                s = singular_values("masked", K, n, r=M / n)
                expected = np.zeros_like(s)
                expected[:K] = 1.0
                expected[K : n * K] = masked_sigma_closed_form(n, M)
                np.testing.assert_allclose(s, expected, atol=1e-10)
            np.testing.assert_allclose(singular_values("masked", K, n, r=1.0), [1.0], atol=1e-12)


def test_tokens_per_class_only_add_zeros():
    for obj, kw in (("ar", {}), ("semi_ar", {"g": 2}), ("masked", {"r": 0.5}), ("masked_bernoulli", {"r": 0.3})):
        s1 = singular_values(obj, 2, 4, m=1, **kw)
        s3 = singular_values(obj, 2, 4, m=3, **kw)
        np.testing.assert_allclose(s3[: len(s1)], s1, atol=1e-10)
        np.testing.assert_allclose(s3[len(s1) :], 0, atol=1e-10)


# (b) orderings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K,n", [(2, 3), (2, 4), (3, 4), (2, 5), (3, 5), (2, 6)])
def test_sigma_K1_orderings(K, n):
    ar, semi = sigma_K1("ar", K, n), sigma_K1("semi_ar", K, n, g=2)
    fixed = [sigma_K1("masked", K, n, r=r) for r in RS]
    bern = [sigma_K1("masked_bernoulli", K, n, r=r) for r in RS]
    # AR and semi-AR (g=2) both have sigma_{K+1} = 1 exactly: the "between" ordering holds only as a tie with AR.
    assert ar == pytest.approx(1.0) and semi == pytest.approx(1.0)
    for v in fixed + bern:
        assert v <= semi + 1e-12 <= ar + 2e-12  # masked <= semi-AR <= AR
    # fixed count: non-increasing in r (steps where round(r n) does not change), equal to AR only when M = 1
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(fixed))
    for r, v in zip(RS, fixed, strict=True):
        assert (v == pytest.approx(1.0)) == (num_masked(r, n) == 1)
    # Bernoulli mask: strictly decreasing in r, already < 1 at the smallest ratio
    assert all(a > b for a, b in itertools.pairwise(bern))
    assert bern[0] < 1 - 1e-6


@pytest.mark.parametrize("K,n", [(2, 4), (3, 4), (2, 6)])
def test_class_singular_values(K, n):
    # sigma_2..sigma_K: exactly 1 for AR, semi-AR and fixed-count masks with M < n (classes never share a context),
    # 0 when every position is masked; only the Bernoulli mask moves them, downwards as r grows.
    for s in (
        singular_values("ar", K, n),
        singular_values("semi_ar", K, n, g=2),
        singular_values("masked", K, n, r=0.5),
    ):
        np.testing.assert_allclose(s[1:K], 1.0, atol=1e-10)
    np.testing.assert_allclose(singular_values("masked", K, n, r=1.0)[1:], 0.0, atol=1e-12)
    cls = [float(singular_values("masked_bernoulli", K, n, r=r)[K - 1]) for r in RS if r < 1]
    assert all(a > b for a, b in itertools.pairwise(cls)) and cls[0] < 1


@pytest.mark.parametrize("K,n", [(2, 4), (3, 5), (2, 6)])
def test_component_counts_and_where_ordering_fails(K, n):
    ar, semi = n_unit("ar", K, n), n_unit("semi_ar", K, n, g=2)
    assert ar == 1 + (n - 1) * K and semi == 1 + (math.ceil(n / 2) - 1) * K
    for M in range(2, n):  # semi-AR strictly between AR and masked on the number of unit singular values
        assert ar > semi > n_unit("masked", K, n, r=M / n) == K
    # Expected ordering FAILS for one masked token (M = 1): n*K components, more than AR's 1 + (n-1)K, and
    # index-wise sigma_i(masked) <= sigma_i(AR) fails at the tail index 1 + (n-1)K where AR is already 0.
    assert n_unit("masked", K, n, r=1 / n) == n * K > ar
    s_m, s_ar = singular_values("masked", K, n, r=1 / n), singular_values("ar", K, n)
    i = 1 + (n - 1) * K
    assert s_ar[i] == pytest.approx(0, abs=1e-10) and s_m[i] == pytest.approx(1.0)
    # ... and for every M < n: masked rank n*K > AR rank 1 + (n-1)K, so the tail index is positive vs AR's 0
    for M in range(2, n):
        s_m = singular_values("masked", K, n, r=M / n)
        assert s_m[i] == pytest.approx(masked_sigma_closed_form(n, M)) and s_m[i] > s_ar[i] + 0.1


# (c) masses --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "objective,kw",
    [
        ("ar", {}),
        ("semi_ar", {"g": 2}),
        ("semi_ar", {"g": 3}),
        ("masked", {"r": 0.5}),
        ("masked", {"r": 1.0}),
        ("masked_bernoulli", {"r": 0.3}),
        ("masked_bernoulli", {"r": 1.0}),
    ],
)
def test_marginals(objective, kw):
    K, n, m = 3, 4, 2
    A, ctx, tgt = cooccurrence_matrix(objective, K, n, m=m, **kw)
    assert A.sum() == pytest.approx(1.0, abs=1e-12) and (A >= 0).all()
    # every target (position, token) is equally likely: 1 / (n K m)
    np.testing.assert_allclose(A.sum(axis=0), 1 / (n * K * m), atol=1e-14)
    assert len(tgt) == n * K * m
    # context marginals derived independently of the enumeration
    if objective in ("ar", "semi_ar"):
        g = kw.get("g", 1)
        group_starts = {(t // g) * g for t in range(n)}
        sizes = {s: sum(1 for t in range(n) if (t // g) * g == s) for s in group_starts}
        expected = [sizes[len(c)] / n * (1 if not c else 1 / (K * m ** len(c))) for c in ctx]
    elif objective == "masked":
        M = num_masked(kw["r"], n)
        expected = [(1 if not c else 1 / (K * m ** len(c))) / math.comb(n, M) for c in ctx]
        assert all(len(c) == n - M for c in ctx)
    else:
        r = kw["r"]
        p_ne = 1 - (1 - r) ** n
        e_size = n * r / p_ne
        expected = []
        for c in ctx:
            size = n - len(c)
            p_S = r**size * (1 - r) ** (n - size) / p_ne
            expected.append(p_S * size / e_size * (1 if not c else 1 / (K * m ** len(c))))
    np.testing.assert_allclose(A.sum(axis=1), expected, atol=1e-14)
    # a non-empty context only ever predicts tokens of its own class
    for i, c in enumerate(ctx):
        if c:
            cls = {tok // m for _, tok in c}
            assert len(cls) == 1
            assert all(tgt[j][1] // m in cls for j in np.flatnonzero(A[i]))


def test_normalized_guards_zero_rows():
    A = np.array([[0.5, 0.0], [0.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(normalized(A), [[1, 0], [0, 0], [0, 1]])


# (d) bad input -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,kw,match",
    [
        (("masked", 2, 4), {"r": 0.0}, r"r must be in \(0, 1\]"),
        (("masked", 2, 4), {"r": 1.5}, r"r must be in \(0, 1\]"),
        (("masked_bernoulli", 2, 4), {"r": -0.2}, r"r must be in \(0, 1\]"),
        (("masked", 2, 4), {}, "needs a mask ratio"),
        (("semi_ar", 2, 4), {"g": 0}, "g must be an integer >= 1"),
        (("semi_ar", 2, 4), {"g": -3}, "g must be an integer >= 1"),
        (("semi_ar", 2, 4), {}, "needs a group size"),
        (("ar", 2, 4), {"g": 2}, "use objective='semi_ar'"),
        (("ar", 2, 4), {"r": 0.5}, "does not apply"),
        (("ar", 2, 1), {}, "n \\(sequence length\\) must be an integer >= 2"),
        (("masked", 2, 0), {"r": 0.5}, "n \\(sequence length\\) must be an integer >= 2"),
        (("bert", 2, 4), {}, "unknown objective"),
        (("ar", 0, 4), {}, "K \\(number of classes\\)"),
        (("masked", 8, 12), {"r": 0.5}, "enumeration too large"),
    ],
)
def test_bad_input(args, kw, match):
    with pytest.raises(ValueError, match=match):
        cooccurrence_matrix(*args, **kw)
    with pytest.raises(ValueError, match=match):
        singular_values(*args, **kw)


def test_closed_form_bad_input():
    with pytest.raises(ValueError, match="n \\(sequence length\\)"):
        masked_sigma_closed_form(1, 1)
    with pytest.raises(ValueError, match="M"):
        masked_sigma_closed_form(4, 0)


# grid, plot and CLI ------------------------------------------------------------------------------------------


def test_grid_plot_and_cli(tmp_path, capsys):
    rows = spectrum_grid([2], [3, 4], [0.5, 1.0], [1, 2])
    assert {row["objective"] for row in rows} == {"ar", "semi_ar", "masked", "masked_bernoulli"}
    for row in rows:
        if row["closed_form"] is not None:
            assert row["sigma_K1"] == pytest.approx(row["closed_form"], abs=1e-10)
    assert "sig_K+1" in format_table(rows)
    png = plot_spectra(rows, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["--out", str(tmp_path / "cli"), "--Ks", "2", "--ns", "3", "--rs", "0.5", "1.0", "--gs", "1", "2"]) == 0
    data = json.loads((tmp_path / "cli" / "theory_spectra.json").read_text())
    assert len(data["rows"]) == 2 + 2 * 2
    assert (tmp_path / "cli" / "theory_spectra.png").stat().st_size > 1000
    assert "masked_bernoulli" in capsys.readouterr().out
