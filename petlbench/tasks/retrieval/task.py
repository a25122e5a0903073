"""Image-text retrieval, implemented: the contrastive training loss, the evaluation by
recall both ways, the suite's splits and their checks, and the random shapes the estimate
runs on."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from petlbench.config import ConfigError, Precision, SuiteConfig
from petlbench.data import scenes
from petlbench.data.files import validate as validate_data
from petlbench.models.loader import Architecture, load_preprocessors
from petlbench.precision import autocast
from petlbench.tasks.base import Batch, Task
from petlbench.tasks.retrieval import RETRIEVAL
from petlbench.tasks.retrieval.data import RetrievalSplit, TensorSplit, suite_splits
from petlbench.tasks.retrieval.metrics import retrieval_recalls


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss): matching pairs sit on the diagonal."""
    logits = logit_scale.exp() * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


@torch.no_grad()
def embed_split(
    model, split: RetrievalSplit, batch_size: int, device: torch.device, precision: Precision = "fp32", host: Callable = iter
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised fp32 embeddings of every image and every caption (captions flattened
    image-major), the forward under the training ``precision`` so that evaluation memory and
    speed reflect it. Batches are read through ``host`` (the loop passes
    `measure.memory.host_batches`, which keeps host data out of the CPU accounting) and
    copied to ``device`` even on the CPU, so that every device holds (and the accounting
    counts) the batch, as with training batches."""

    def embed(encode, *batch: torch.Tensor) -> torch.Tensor:
        with autocast(precision, device.type):
            out = encode(*(t.to(device, copy=True) for t in batch))
        return F.normalize(out.float(), dim=-1)

    images = [embed(model.encode_image, pixels) for pixels in host(split.image_batches(batch_size))]
    texts = [embed(model.encode_text, ids, mask) for ids, mask in host(split.caption_batches(batch_size))]
    return torch.cat(images), torch.cat(texts)


def evaluate(
    model,
    split: RetrievalSplit,
    batch_size: int,
    device: torch.device,
    folds: int = 1,
    precision: Precision = "fp32",
    host: Callable = iter,
) -> dict:
    """Recalls and rSum of ``model`` on ``split`` (``values``), with the number of images
    and captions ranked (``evaluated``); with ``folds`` > 1, also under ``folds`` their mean
    over that many equal folds (COCO's 1K test: 5 folds of its 5K test images); the forward
    under the training ``precision``. Restores the caller's train/eval mode."""
    was_training = model.training
    model.eval()
    try:
        images, texts = embed_split(model, split, batch_size, device, precision, host)
    finally:
        model.train(was_training)
    similarity = (images @ texts.T).float().cpu()
    k = split.captions_per_image
    metrics = {
        "values": retrieval_recalls(similarity, k),
        "evaluated": {"images": split.n_images, "captions": split.n_images * k},
        "folds": None,
    }
    if folds > 1:
        m = split.n_images // folds  # `check_data` checks that the folds are equal
        per_fold = [retrieval_recalls(similarity[f * m : (f + 1) * m, f * m * k : (f + 1) * m * k], k) for f in range(folds)]
        values = {key: statistics.fmean(r[key] for r in per_fold) for key in per_fold[0]}
        metrics["folds"] = {"count": folds, "evaluated": {"images": m}, "values": values}
    return metrics


def random_batch(architecture: Architecture, batch_size: int, text_length: int) -> Batch:
    """A training batch of ``text_length``-token captions. Values do not change the memory
    with one exception: transformers builds the text tower's attention mask only when a
    caption is padded (and always on fake tensors, whose values it cannot read), so the
    second half of every caption is padding, as in real data."""
    mask = torch.ones(batch_size, text_length, dtype=torch.long)
    mask[:, (text_length + 1) // 2 :] = 0
    return {
        "pixel_values": torch.randn(batch_size, architecture.num_channels, architecture.image_size, architecture.image_size),
        "input_ids": torch.randint(architecture.vocab_size, (batch_size, text_length)),
        "attention_mask": mask,
    }


class Retrieval(Task):
    spec = RETRIEVAL

    def check_data(self, suite: SuiteConfig) -> tuple[int, int]:
        """Data read from files is checked whole (every image), and so is the model's image
        processor that reads it; the generated shifted target must leave scenes to train
        on. Counts images."""
        data = suite.data
        if data.kind == "scenes":
            n_train, n_eval = data.train_images, getattr(data, f"{suite.eval.split}_images")
            if data.target == "shifted" and data.test_images + data.val_images >= (n := len(scenes.single_object_scenes())):
                raise ConfigError(
                    f"key 'data.test_images': {data.test_images} test + {data.val_images} val images leave none of the {n} "
                    "single-object scenes for training (the shifted target's splits share no scene)"
                )
            return n_train, n_eval
        if load_preprocessors(suite.model.name)[1] is None:
            raise ConfigError(
                f"model {suite.model.name!r} has no image processor (preprocessor_config.json), which data.kind {data.kind!r} needs: "
                "save one next to the checkpoint (e.g. CLIPProcessor.save_pretrained)"
            )
        splits = validate_data(data)
        return len(splits["train"]), len(splits[suite.eval.split])

    def splits(self, suite: SuiteConfig, tokenizer, image_processor, pin_memory: bool) -> dict[str, RetrievalSplit]:
        return suite_splits(suite.data, tokenizer, image_processor, pin_memory)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return contrastive_loss(
            model.encode_image(batch["pixel_values"]), model.encode_text(batch["input_ids"], batch["attention_mask"]), model.logit_scale
        )

    def evaluate(self, model, split, batch_size, device, folds, precision, host):
        return evaluate(model, split, batch_size, device, folds, precision, host)

    def eval_items(self, split: RetrievalSplit) -> int:
        return split.n_images * (1 + split.captions_per_image)

    def random_batch(self, architecture: Architecture, batch_size: int, suite: SuiteConfig) -> Batch:
        return random_batch(architecture, batch_size, suite.data.text_length)

    def random_split(self, architecture: Architecture, items: int, suite: SuiteConfig) -> TensorSplit:
        """``items`` images with the suite's captions each; a fake mask's values are unknown,
        so transformers builds the attention mask as for padded captions."""
        captions, text_length, side = suite.data.captions_per_image, suite.data.text_length, architecture.image_size
        mask = torch.ones(items, captions, text_length, dtype=torch.long)
        return TensorSplit(
            torch.empty(items, architecture.num_channels, side, side),
            torch.randint(architecture.vocab_size, (items, captions, text_length)),
            mask,
        )


TASK = Retrieval()
