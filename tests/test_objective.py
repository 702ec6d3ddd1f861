"""TCL's loss terms (spec section 3) against values worked out by hand in plain Python.

The reference values below use only `math` on lists of floats, never the functions under test,
so a wrong sign, a swapped target or a missed `no_grad` shows up as a mismatch.
"""
from __future__ import annotations

import math

import pytest
import torch

from tcl_hf.objective import (TCLWeights, blend, ce_loss, entropy_regularizers, info_nce, mixup,
                              soft_cross_entropy, tcl_loss)

# ---- plain-Python reference arithmetic ----------------------------------------------------------


def py_softmax(row):
    exps = [math.exp(v) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def py_ce(logits, targets):
    """-mean_i sum_k t_ik log softmax(l_i)_k."""
    total = 0.0
    for row, target in zip(logits, targets):
        p = py_softmax(row)
        total -= sum(t * math.log(pk) for t, pk in zip(target, p))
    return total / len(logits)


def py_mix(a, b, t):
    """(1 - t_i) a_i + t_i b_i per row."""
    return [[(1 - ti) * x + ti * y for x, y in zip(ra, rb)] for ra, rb, ti in zip(a, b, t)]


def dot(u, v):
    return sum(x * y for x, y in zip(u, v))


def py_info_nce(zq, zk, temperature):
    """NT-Xent over the 2B anchors [zq; zk]: the positive of row i is the other view of the same image."""
    z = zq + zk
    n = len(zq)
    total = 0.0
    for i in range(2 * n):
        positive = i + n if i < n else i - n
        denominator = sum(math.exp(dot(z[i], z[j]) / temperature) for j in range(2 * n) if j != i)
        total -= math.log(math.exp(dot(z[i], z[positive]) / temperature) / denominator)
    return total / (2 * n)


def py_mix_rows(rows, perm, lam):
    return [[lam * a + (1 - lam) * b for a, b in zip(rows[r], rows[perm[r]])] for r in range(len(rows))]


def py_entropies(logits):
    probs = [py_softmax(row) for row in logits]
    ent = sum(-sum(p * math.log(p) for p in row) for row in probs) / len(probs)
    mean = [sum(row[k] for row in probs) / len(probs) for k in range(len(probs[0]))]
    ne = sum(m * math.log(m) for m in mean)
    return ent, ne


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---- single terms --------------------------------------------------------------------------------


def test_soft_cross_entropy_by_hand():
    logits = [[1.0, 2.0], [0.0, 0.0]]
    target = [[0.25, 0.75], [1.0, 0.0]]
    lse = math.log(math.exp(1.0) + math.exp(2.0))
    row0 = 0.25 * (1.0 - lse) + 0.75 * (2.0 - lse)
    row1 = 1.0 * -math.log(2.0)
    expected = -(row0 + row1) / 2
    assert soft_cross_entropy(t(logits), t(target)).item() == pytest.approx(expected, abs=1e-6)


def test_ce_baseline_by_hand():
    logits = [[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]
    expected = -(3.0 - math.log(math.exp(3) + math.exp(1) + 1)) / 2 - (0.0 - math.log(2 + math.exp(2))) / 2
    out = ce_loss(t(logits), torch.tensor([0, 1]))
    assert out["loss"].item() == pytest.approx(expected, abs=1e-6)
    assert out["loss_cls"].item() == pytest.approx(expected, abs=1e-6)


# Two images, two unit-length views each (0.6^2 + 0.8^2 = 1).
ZQ = [[1.0, 0.0], [0.0, 1.0]]
ZK = [[0.6, 0.8], [0.8, 0.6]]


def info_nce_by_hand(temperature):
    """The 4 anchors of ZQ/ZK written out: q0.q1 = 0, q0.k0 = 0.6, q0.k1 = 0.8, q1.k0 = 0.8,
    q1.k1 = 0.6, k0.k1 = 0.96; an anchor is never its own negative."""
    e = lambda s: math.exp(s / temperature)  # noqa: E731
    anchor_q0 = -math.log(e(0.6) / (e(0.0) + e(0.6) + e(0.8)))   # others: q1, k0 (positive), k1
    anchor_q1 = -math.log(e(0.6) / (e(0.0) + e(0.8) + e(0.6)))   # others: q0, k0, k1 (positive)
    anchor_k0 = -math.log(e(0.6) / (e(0.6) + e(0.8) + e(0.96)))  # others: q0 (positive), q1, k1
    anchor_k1 = -math.log(e(0.6) / (e(0.8) + e(0.6) + e(0.96)))  # others: q0, q1 (positive), k0
    return (anchor_q0 + anchor_q1 + anchor_k0 + anchor_k1) / 4


@pytest.mark.parametrize("temperature", [0.5, 0.25])
def test_info_nce_by_hand(temperature):
    got = info_nce(t(ZQ), t(ZK), temperature).item()
    assert got == pytest.approx(info_nce_by_hand(temperature), abs=1e-6)
    # The general helper (used with more rows below) agrees with the written-out anchors.
    assert py_info_nce(ZQ, ZK, temperature) == pytest.approx(info_nce_by_hand(temperature), abs=1e-12)


def test_entropy_regularizers_by_hand():
    # Row 0: softmax(0, log 3) = (1/4, 3/4); row 1: (1/2, 1/2); batch mean (3/8, 5/8).
    logits = [[0.0, math.log(3.0)], [0.0, 0.0]]
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    h1 = math.log(2.0)
    ent, ne = entropy_regularizers(t(logits))
    assert ent.item() == pytest.approx((h0 + h1) / 2, abs=1e-6)
    assert ne.item() == pytest.approx(3 / 8 * math.log(3 / 8) + 5 / 8 * math.log(5 / 8), abs=1e-6)


def test_blend_is_per_row():
    a = t([[1.0, 0.0], [0.0, 1.0]])
    b = t([[0.0, 1.0], [1.0, 0.0]])
    got = blend(a, b, t([[0.25], [1.0]]))
    assert torch.allclose(got, t([[0.75, 0.25], [1.0, 0.0]]))


# ---- mixup ---------------------------------------------------------------------------------------


def test_mixup_formula_and_permutation():
    x = torch.arange(12, dtype=torch.float64).view(6, 2) * 10
    torch.manual_seed(1)
    mixed, perm, lam = mixup(x, alpha=1.0)
    assert 0.5 <= lam <= 1.0
    assert sorted(perm.tolist()) == list(range(6))
    rows = x.tolist()
    expected = py_mix_rows(rows, perm.tolist(), lam)
    assert torch.allclose(mixed, t(expected))


def test_mixup_is_reproducible_from_the_torch_seed():
    x = torch.randn(8, 3)
    draws = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        draws.append(mixup(x, alpha=1.0))
    (m0, p0, l0), (m1, p1, l1), (m2, p2, l2) = draws
    assert l0 == l1 and torch.equal(p0, p1) and torch.equal(m0, m1)
    assert l0 != l2


def test_mixup_lambda_is_folded_beta():
    # With alpha = 1, Beta is uniform on [0, 1]; max(l, 1 - l) is uniform on [0.5, 1] (mean 0.75).
    torch.manual_seed(0)
    x = torch.zeros(4, 1)
    lams = [mixup(x, alpha=1.0)[2] for _ in range(4000)]
    assert min(lams) >= 0.5 and max(lams) <= 1.0
    assert sum(lams) / len(lams) == pytest.approx(0.75, abs=0.01)
    assert sum(lam < 0.75 for lam in lams) / len(lams) == pytest.approx(0.5, abs=0.04)


# ---- the whole TCL objective -----------------------------------------------------------------------

B = 2
LOGITS_Q = [[2.0, 0.0], [0.5, 1.5]]
LOGITS_K = [[1.0, 0.0], [-1.0, 1.0]]
LOGITS_MIX = [[0.3, -0.2], [1.0, 0.4], [0.0, 2.0], [-0.5, 0.5], [1.5, 1.0], [0.2, 0.9]]
Z_MIX = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-0.6, 0.8], [0.8, -0.6]]
PROTOTYPES = [[0.6, 0.8], [-0.8, 0.6]]
LABELS = [0, 1]
ONE_HOT = [[1.0, 0.0], [0.0, 1.0]]
CONF = [0.9, 0.2]
LAM = 0.7
PERM = [2, 0, 5, 1, 3, 4]
SCALE1, SCALE2 = 0.8, 0.5
TEMP = 0.5
WEIGHTS = TCLWeights(con=0.25, cls=0.5, align=2.0, ent=0.3, ne=0.7)


def hand_targets(warmup):
    """(t_q, t_k, T_mix) as spec section 3 step 4 defines them."""
    if warmup:
        tiled = ONE_HOT * 3
        return ONE_HOT, ONE_HOT, py_mix_rows(tiled, PERM, LAM)
    p_q = [py_softmax(r) for r in LOGITS_Q]
    p_k = [py_softmax(r) for r in LOGITS_K]
    t_q = py_mix(p_k, ONE_HOT, [w * SCALE1 for w in CONF])
    t_k = py_mix(p_q, ONE_HOT, [w * SCALE1 for w in CONF])
    mean_p = [[(a + b) / 2 for a, b in zip(rq, rk)] for rq, rk in zip(p_q, p_k)]
    t_m = py_mix(mean_p, ONE_HOT, [w * SCALE2 for w in CONF])
    # Tiled like concat(x_w, x_q, x_k): row r of the 3B mixed rows is image r mod B.
    return t_q, t_k, py_mix_rows(t_m * 3, PERM, LAM)


def hand_terms(warmup):
    t_q, t_k, t_mix = hand_targets(warmup)
    cls = py_ce(LOGITS_Q, t_q) + py_ce(LOGITS_K, t_k) + py_ce(LOGITS_MIX, t_mix)
    align_logits = [[dot(z, mu) / TEMP for mu in PROTOTYPES] for z in Z_MIX]
    align = py_ce(align_logits, t_mix)
    ent, ne = py_entropies(LOGITS_Q + LOGITS_K + LOGITS_MIX)
    con = info_nce_by_hand(TEMP)
    total = WEIGHTS.con * con + WEIGHTS.cls * cls + WEIGHTS.align * align + WEIGHTS.ent * ent + WEIGHTS.ne * ne
    return {"loss": total, "loss_con": con, "loss_cls": cls, "loss_align": align, "loss_ent": ent, "loss_ne": ne}


def leaf(rows):
    return t(rows).requires_grad_(True)


def run_tcl_loss(warmup, **kwargs):
    inputs = dict(z_q=leaf(ZQ), z_k=leaf(ZK), z_mix=leaf(Z_MIX), logits_q=leaf(LOGITS_Q),
                  logits_k=leaf(LOGITS_K), logits_mix=leaf(LOGITS_MIX))
    out = tcl_loss(**inputs, labels=torch.tensor(LABELS), confidences=t(CONF), prototypes=t(PROTOTYPES),
                   lam=LAM, perm=torch.tensor(PERM), scale1=SCALE1, scale2=SCALE2, warmup=warmup,
                   temperature=TEMP, weights=WEIGHTS, **kwargs)
    return out, inputs


@pytest.mark.parametrize("warmup", [True, False])
def test_tcl_loss_terms_by_hand(warmup):
    out, _ = run_tcl_loss(warmup)
    expected = hand_terms(warmup)
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value, abs=1e-6), key


def test_warmup_and_cross_supervision_differ():
    # Guards the test data itself: the two phases must give different targets here.
    assert hand_terms(True)["loss_cls"] != pytest.approx(hand_terms(False)["loss_cls"], abs=1e-3)


@pytest.mark.parametrize("warmup", [True, False])
def test_targets_carry_no_gradient(warmup):
    """d loss_cls / d logits = (softmax(logits) - target) / rows, with the hand-made targets:
    any gradient through the targets (built from p_q, p_k) would add to this."""
    out, inputs = run_tcl_loss(warmup)
    out["loss_cls"].backward()
    t_q, t_k, t_mix = hand_targets(warmup)
    for name, logits, target in (("logits_q", LOGITS_Q, t_q), ("logits_k", LOGITS_K, t_k),
                                 ("logits_mix", LOGITS_MIX, t_mix)):
        rows = len(logits)
        expected = [[(p - y) / rows for p, y in zip(py_softmax(r), tr)] for r, tr in zip(logits, target)]
        assert torch.allclose(inputs[name].grad, t(expected), atol=1e-7), name


def test_align_gradient_reaches_only_z_mix():
    out, inputs = run_tcl_loss(False)
    out["loss_align"].backward()
    assert inputs["z_mix"].grad is not None and inputs["z_mix"].grad.abs().sum() > 0
    for name in ("logits_q", "logits_k", "logits_mix", "z_q", "z_k"):
        assert inputs[name].grad is None, name


def test_gather_puts_every_process_rows_into_the_contrastive_loss():
    # Another process's two images, as the all-gather would append them.
    remote_q = [[0.0, -1.0]]
    remote_k = [[-0.6, -0.8]]

    def gather(z):
        remote = remote_q if z.data_ptr() == inputs["z_q"].data_ptr() else remote_k
        return torch.cat([z, t(remote)])

    inputs = dict(z_q=leaf(ZQ), z_k=leaf(ZK))
    out = tcl_loss(**inputs, z_mix=leaf(Z_MIX), logits_q=leaf(LOGITS_Q), logits_k=leaf(LOGITS_K),
                   logits_mix=leaf(LOGITS_MIX), labels=torch.tensor(LABELS), confidences=t(CONF),
                   prototypes=t(PROTOTYPES), lam=LAM, perm=torch.tensor(PERM), scale1=SCALE1,
                   scale2=SCALE2, warmup=False, temperature=TEMP, weights=WEIGHTS, gather=gather)
    expected = py_info_nce(ZQ + remote_q, ZK + remote_k, TEMP)
    assert out["loss_con"].item() == pytest.approx(expected, abs=1e-6)
    out["loss_con"].backward()
    assert inputs["z_q"].grad.abs().sum() > 0 and inputs["z_k"].grad.abs().sum() > 0
