"""Evaluation: predictions at any size, exact confusion matrices, reports beside the paper.

- `inference`: class probabilities at a target size, averaged over flips and scales;
- `metrics`: the confusion matrix on device, IoU and mIoU (and mIoU* of 16-class models);
- `protocol`: a weights folder on a prepared split under the `original` or `full` protocol;
- `report`: tables, Markdown, JSON and a per-class chart beside `published` numbers;
- `predictor`: label maps, overlays and label-id PNGs of single images;
- `visualize`: the Cityscapes palette, overlays, panels and charts.
"""
