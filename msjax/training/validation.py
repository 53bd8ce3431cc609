"""Target validation during training: mIoU over a prepared split, pictures for TensorBoard.

Single scale, main head, logits upsampled to the stored label size: at the 1024x512
Cityscapes config that is the original's protocol ('original' in msjax.evaluate, which
offers the full-resolution protocol, flips and scales too).
"""

from __future__ import annotations

import jax
import numpy as np

from msjax.data.normalize import denormalize
from msjax.data.pipeline import make_eval_stream
from msjax.evaluation import inference, metrics, visualize
from msjax.evaluation.loop import evaluate_split


class Validator:
    """Evaluates a model's variables on config.eval's split.

    Args:
      model: the DeepLabV2 being trained.
      config: the run config (eval.*, model.num_classes, train.num_images).
      data_dir: prepared data folder.
      normalization: the weights' input normalisation.
      mesh: the device mesh; the eval batch is rounded up to a multiple of its size (the
        stream pads and masks the last batch, so no example counts twice).
    """

    def __init__(self, model, config, data_dir: str, normalization: str, mesh):
        devices = mesh.devices.size
        batch = -(-config.eval.batch_size // devices) * devices
        self.num_classes = config.model.num_classes
        self.num_images = config.train.num_images
        self.normalization = normalization
        self.mesh = mesh
        self.stream = make_eval_stream(
            dict(
                dataset=config.eval.dataset,
                size=config.eval.size,
                split=config.eval.split,
                batch_size=batch // jax.process_count(),
                num_classes=self.num_classes,
                normalization=normalization,
                data_dir=data_dir,
                flip=False,
                blur=False,
            )
        )
        self.step = inference.make_eval_step(model, self.num_classes)

    def run(self, params, batch_stats, step: int, writer=None) -> dict:
        """Scores of one pass (metrics.summarize) and writes them (and pictures) at `step`."""
        variables = {"params": params, "batch_stats": batch_stats}
        pictures = []

        def keep_pictures(local, out):
            # Pictures only on a single host: a multi-host prediction is not addressable here.
            if len(pictures) < self.num_images and jax.process_count() == 1:
                pred = np.asarray(jax.device_get(out["pred"]))[: len(local["image"])]
                pictures.append((local, pred))

        matrix, _ = evaluate_split(
            self.step, variables, self.stream, self.num_classes, mesh=self.mesh,
            on_batch=keep_pictures,
        )  # fmt: skip
        result = metrics.summarize(matrix)
        if writer is not None:
            scores = {"val/miou": result["miou"], "val/pixel_accuracy": result["pixel_accuracy"]}
            if "miou13" in result:
                scores["val/miou13"] = result["miou13"]
            writer.scalars(step, scores)
            if pictures:
                writer.images(step, "val/image_label_prediction", self._panels(pictures))
        return result

    def _panels(self, pictures) -> np.ndarray:
        panels = []
        for local, pred in pictures:
            for i in np.flatnonzero(local["mask"]):
                image = denormalize(local["image"][i], self.normalization)
                panels.append(visualize.panel(image, local["label"][i], pred[i], self.num_classes))
        return np.stack(panels[: self.num_images])
