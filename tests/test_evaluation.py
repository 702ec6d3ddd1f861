"""The kNN monitor's weighted vote, checked by hand."""
import math

import torch
import torch.nn.functional as F

from tcl_hf.evaluation import knn_predict


def _bank():
    # One query; four bank vectors at cosine similarity 0.9 (class 1), 0.5 and 0.5 (class 0), -1 (class 2).
    query = torch.tensor([[1.0, 0.0]])
    angles = [math.acos(0.9), math.acos(0.5), -math.acos(0.5), math.pi]
    bank = torch.tensor([[math.cos(a), math.sin(a)] for a in angles])
    return query, F.normalize(bank, dim=1), torch.tensor([1, 0, 0, 2])


def test_votes_are_weighted_by_exp_similarity_over_t():
    query, bank, labels = _bank()
    # T = 1: class 0 gets 2 e^0.5 = 3.30 against class 1's e^0.9 = 2.46 -> 0.
    assert knn_predict(query, bank, labels, 3, k=3, temperature=1.0).tolist() == [0]
    # T = 0.1: e^9 = 8103 against 2 e^5 = 297 -> 1.
    assert knn_predict(query, bank, labels, 3, k=3, temperature=0.1).tolist() == [1]
    # k = 1: only the nearest votes.
    assert knn_predict(query, bank, labels, 3, k=1, temperature=1.0).tolist() == [1]


def test_a_tiny_temperature_does_not_overflow_the_vote():
    query, bank, labels = _bank()
    # T = 0.005: e^180 and e^100 overflow float32; the nearest neighbour must still win (e^180 >> 2 e^100).
    assert knn_predict(query, bank, labels, 3, k=4, temperature=0.005).tolist() == [1]
