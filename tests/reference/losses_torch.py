"""PyTorch references for msjax.losses, written from docs/original.md, "Losses".

They keep the original code's layout (NCHW logits, ``[N, H, W]`` labels) and its operations
(``torch.histc`` histograms, ``torch.max`` argmax, ``F.cross_entropy``), so that the tests
compare msjax against the original's arithmetic through torch autograd. Two deliberate
departures, both documented in docs/original.md:

* cross-entropy with every pixel ignored is 0 here (PyTorch's mean reduction gives NaN);
* the image-wise weighted loss is given twice: ``iw_max_square_original`` is the original
  verbatim (valid at batch 1 only: its weights have no class axis and fail to broadcast
  for batch > 1), and ``iw_max_square`` loops over the batch, which is the
  behaviour msjax implements for any batch size.
"""

import torch
import torch.nn.functional as F


def cross_entropy(logits, labels, ignore_index=255):
    """Mean CE over non-ignored pixels, 0 when all are ignored. logits NCHW, labels NHW."""
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum()
    return total / torch.clamp(count, min=1).to(total.dtype)


def max_square(logits):
    """The original ``MaxSquareloss``: ``-mean(p^2) / 2`` (its mask is always true)."""
    prob = F.softmax(logits, dim=1)
    mask = prob != -1
    return -torch.mean(torch.pow(prob, 2)[mask]) / 2


def iw_max_square_original(logits, ratio=0.2):
    """The original ``IW_MaxSquareloss`` verbatim (ignore_index -1, label None).

    Only correct at batch 1: the stacked weights are ``[N, H, W]``, with no class axis, so
    they do not broadcast against ``[N, C, H, W]`` unless ``N == 1`` (or, by accident,
    ``N == C``, where image j's weights multiply class j of every image).
    """
    ignore_index = -1
    prob = F.softmax(logits, dim=1)
    num_class = prob.size(1)
    mask = prob != ignore_index
    maxpred, argpred = torch.max(prob, 1)
    mask_arg = maxpred != ignore_index
    argpred = torch.where(mask_arg, argpred, torch.ones(1, dtype=torch.long) * ignore_index)
    label = argpred
    weights = []
    batch_size = prob.size(0)
    for i in range(batch_size):
        hist = torch.histc(
            label[i].cpu().data.float(), bins=num_class + 1, min=-1, max=num_class - 1
        ).float()
        hist = hist[1:]
        weight = (
            1 / torch.max(torch.pow(hist, ratio) * torch.pow(hist.sum(), 1 - ratio), torch.ones(1))
        )[argpred[i]].detach()
        weights.append(weight)
    weights = torch.stack(weights, dim=0)
    mask = mask_arg.unsqueeze(1).expand_as(prob)
    return -torch.sum((torch.pow(prob, 2) * weights)[mask]) / (batch_size * num_class)


def iw_max_square(logits, ratio=0.2):
    """Per-image IW loss for any batch: ``-sum p^2 W / (N C)`` = mean of batch-1 losses."""
    losses = [iw_max_square_original(logits[i : i + 1], ratio) for i in range(logits.size(0))]
    return torch.stack(losses).mean()


def entropy(logits):
    """MinEnt baseline: mean over N*C*H*W of ``-log_softmax * softmax``, p not detached."""
    return torch.mean(-F.log_softmax(logits, dim=1) * F.softmax(logits, dim=1))


def hard_pseudo_label(logits, threshold=0.95, ignore_index=255):
    """CE against detached argmax labels, ignored where max p <= threshold."""
    prob = F.softmax(logits, dim=1)
    maxpred, argpred = torch.max(prob.detach(), dim=1)
    mask = maxpred > threshold
    label = torch.where(mask, argpred, torch.ones(1, dtype=torch.long) * ignore_index)
    return cross_entropy(logits, label, ignore_index)


def multi_level_guidance(main_logits, aux_logits, threshold=0.95, ignore_index=255):
    """CE on the aux head against argmax of the averaged softmaxes, kept where either is sure."""
    pred_p = F.softmax(main_logits, dim=1)
    pred_p_2 = F.softmax(aux_logits, dim=1)
    maxpred, _ = torch.max(pred_p.detach(), dim=1)
    maxpred_2, _ = torch.max(pred_p_2.detach(), dim=1)
    pred_c = (pred_p + pred_p_2) / 2
    _, argpred_c = torch.max(pred_c.detach(), dim=1)
    mask = (maxpred > threshold) | (maxpred_2 > threshold)
    label_2 = torch.where(mask, argpred_c, torch.ones(1, dtype=torch.long) * ignore_index)
    return cross_entropy(aux_logits, label_2, ignore_index)
