"""Image-text retrieval (Flickr30K / COCO protocol): a dual encoder trained with a
symmetric contrastive loss, judged by recall at 1, 5 and 10 both ways and their sum,
rSum. The spec only; `petlbench.tasks.retrieval.task` implements it."""

from petlbench.tasks import Metric, TaskSpec, register

RECALL_KS = (1, 5, 10)
DIRECTIONS = {"i2t": ("I→T", "Image → Text"), "t2i": ("T→I", "Text → Image")}
# Recalls at each k both ways, in percent (`metrics.retrieval_recalls`), then rSum (out of 600).
RECALLS = tuple(f"{d}_r{k}" for d in DIRECTIONS for k in RECALL_KS)
RSUM = ("rSum", (("rsum", "rSum"),))

RETRIEVAL = register(
    TaskSpec(
        name="retrieval",
        display="image-text retrieval",
        metrics=(*(Metric(name, name.replace("_r", " R@")) for name in RECALLS), Metric("rsum", "rSum", axis="rSum (max 600)")),
        primary="rsum",
        module="petlbench.tasks.retrieval.task",
        unit="images",
        # At the text width every recall under its direction; at 7 pt a column (3.3 in) holds
        # R@1 of each direction beside the parameters and memory (measured in TeX).
        paper={
            "text": (*((long, tuple((f"{d}_r{k}", f"R@{k}") for k in RECALL_KS)) for d, (_, long) in DIRECTIONS.items()), RSUM),
            "column": (("R@1", tuple((f"{d}_r1", short) for d, (short, _) in DIRECTIONS.items())), RSUM),
        },
        paper_note={"column": "R@1: image → text (I→T) and text → image (T→I). "},
        describe_evaluated=lambda e: f"{e['images']:,} test images, {e['captions'] // e['images']} captions each",
    )
)
