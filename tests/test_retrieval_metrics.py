import itertools

import pytest
import torch

from petlbench.tasks.retrieval.metrics import retrieval_recalls


def test_hand_computed_case_with_five_captions_per_image():
    # image 0: two foreign captions (0.9, 0.8) outrank its best own caption (0.5) -> rank 2
    # image 1: its own caption 5 (0.7) is the best overall -> rank 0
    sim = torch.tensor(
        [
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.05, 0.05, 0.05],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.7, 0.6, 0.6, 0.6, 0.6],
        ]
    )
    r = retrieval_recalls(sim, captions_per_image=5)
    # text->image: captions 5 and 6 score higher with image 0 (0.9 > 0.7, 0.8 > 0.6): 8/10 correct
    expected = {"i2t_r1": 50.0, "i2t_r5": 100.0, "i2t_r10": 100.0, "t2i_r1": 80.0, "t2i_r5": 100.0, "t2i_r10": 100.0}
    for key, value in expected.items():
        assert r[key] == pytest.approx(value)
    assert r["rsum"] == pytest.approx(530.0)


def _reference(sim: torch.Tensor, k: int) -> dict[str, float]:
    """A plain-loop implementation by sorting, independent of the vectorised one."""
    n_img, n_cap = sim.shape
    i2t_ranks = []
    for i in range(n_img):
        order = sorted(range(n_cap), key=lambda j: -sim[i, j].item())
        i2t_ranks.append(min(order.index(j) for j in range(i * k, (i + 1) * k)))
    t2i_ranks = []
    for j in range(n_cap):
        order = sorted(range(n_img), key=lambda i: -sim[i, j].item())
        t2i_ranks.append(order.index(j // k))
    out = {}
    for name, ranks in (("i2t", i2t_ranks), ("t2i", t2i_ranks)):
        for cut in (1, 5, 10):
            out[f"{name}_r{cut}"] = 100.0 * sum(r < cut for r in ranks) / len(ranks)
    return out


@pytest.mark.parametrize("n_images,seed", list(itertools.product([3, 12, 40], [0, 1])))
def test_matches_sorting_reference(n_images, seed):
    sim = torch.randn(n_images, n_images * 5, generator=torch.Generator().manual_seed(seed))
    got = retrieval_recalls(sim, 5)
    for key, value in _reference(sim, 5).items():
        assert got[key] == pytest.approx(value)


def test_rejects_mismatched_caption_count():
    with pytest.raises(ValueError):
        retrieval_recalls(torch.zeros(2, 9), 5)
