"""Retrieval metrics, the Flickr30K / COCO protocol."""

from __future__ import annotations

import torch

from petlbench.tasks.retrieval import RECALL_KS


def retrieval_recalls(similarity: torch.Tensor, captions_per_image: int) -> dict[str, float]:
    """R@1/5/10 both ways (percent) and rSum from an (images, captions) similarity matrix
    whose caption ``j`` belongs to image ``j // captions_per_image``.

    A rank counts the candidates scoring strictly higher than the ground truth, so ties
    resolve in the ground truth's favour, identically on every machine.
    """
    n_images, n_captions = similarity.shape
    if n_captions != n_images * captions_per_image:
        raise ValueError(f"{n_captions} captions for {n_images} images x {captions_per_image}")
    owner = torch.arange(n_captions, device=similarity.device) // captions_per_image
    # image -> text: the best-ranked of the image's own captions
    own = similarity.view(n_images, n_images, captions_per_image)[torch.arange(n_images), torch.arange(n_images)]
    best_own = own.max(dim=1).values
    i2t_rank = (similarity > best_own[:, None]).sum(dim=1)
    # text -> image: the caption's image among all images
    gt = similarity[owner, torch.arange(n_captions)]
    t2i_rank = (similarity > gt[None, :]).sum(dim=0)
    out = {}
    for k in RECALL_KS:
        out[f"i2t_r{k}"] = 100.0 * (i2t_rank < k).double().mean().item()
    for k in RECALL_KS:
        out[f"t2i_r{k}"] = 100.0 * (t2i_rank < k).double().mean().item()
    out["rsum"] = sum(out.values())
    return out
