"""Distillation with the transformers ``Trainer``: :class:`DistillationTrainer` and :func:`distillation_compute_loss`.

The loss is :class:`kdlab.distillation_loss.DistillationLoss` (the objective ``kdlab distill`` trains) computed from
the student's and the teacher's final (post-norm) hidden states and lm_head weights; both models are asked for the
logits of one position only (``logits_to_keep=1``), so no ``[B, T, V]`` logits are built. Batches are those of a
causal LM: ``input_ids``, ``attention_mask`` and ``labels`` [B, T] (-100 on ignored positions; the hidden state at
position t predicts ``labels[:, t + 1]``). With a teacher cache (:func:`kdlab.teacher_cache.load_cache`) instead
of a teacher model, batches also carry ``index`` [B], each row's ``Encoded.index`` (as :func:`kdlab.data.tokenize.collate`
writes it), and no teacher forward pass runs.

Normalisation: the Trainer passes ``num_items_in_batch``, the number of predicted tokens (``labels[:, 1:] != -100``)
of the whole accumulated batch on all processes; the loss is the batch's sum divided by it, times the number of
processes (the gradient all-reduce averages), which is exactly kdlab's own loop (:mod:`kdlab.train.loop`).

Example::

    trainer = DistillationTrainer(model=student, teacher=teacher, args=TrainingArguments(..., remove_unused_columns=False),
                                  train_dataset=dataset, data_collator=collator,
                                  loss_fn=DistillationLoss("fkl", temperature=2.0, kd_weight=0.5))
    trainer.train()
"""

from __future__ import annotations

import torch
from transformers import Trainer

from kdlab.distillation_loss import DistillationLoss
from kdlab.errors import KdlabError
from kdlab.models.heads import final_hidden, output_weight


def distillation_compute_loss(
    model, inputs: dict, *, loss_fn: DistillationLoss, teacher=None, teacher_cache=None, num_items_in_batch=None
) -> torch.Tensor:
    """The distillation loss of one batch: the student's forward pass, the teacher's (without gradient) or the
    cache rows of ``inputs["index"]``, then ``loss_fn``; divided by ``num_items_in_batch`` when given, else the
    mean over the batch's predicted tokens."""
    if (teacher is None) == (teacher_cache is None):
        raise KdlabError("give either a teacher model or a teacher cache")
    labels = inputs["labels"]
    hidden = final_hidden(model, inputs["input_ids"], inputs["attention_mask"])
    if teacher is not None:
        with torch.no_grad():
            teacher_hidden = final_hidden(teacher, inputs["input_ids"], inputs["attention_mask"])
        return loss_fn(
            hidden,
            output_weight(model),
            labels,
            teacher_hidden,
            output_weight(teacher),
            num_items_in_batch=num_items_in_batch,
        )
    if "index" not in inputs:
        raise KdlabError(
            "a teacher cache needs the batch's example indices (inputs['index'], kdlab.data.tokenize.collate); "
            "pass remove_unused_columns=False"
        )
    return loss_fn(
        hidden,
        output_weight(model),
        labels,
        teacher_cache=teacher_cache,
        example_index=inputs["index"],
        num_items_in_batch=num_items_in_batch,
    )


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` whose loss is kdlab's distillation objective against ``teacher`` (a causal LM
    with the student's tokenizer, moved to the training device and frozen) or ``teacher_cache``.

    ``loss_fn`` defaults to ``DistillationLoss()`` (fkl, tau = 2, w = 0.5). Everything else is the Trainer's.
    """

    def __init__(self, *args, teacher=None, teacher_cache=None, loss_fn: DistillationLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if (teacher is None) == (teacher_cache is None):
            raise KdlabError("DistillationTrainer needs either teacher= or teacher_cache=")
        if teacher is not None:
            teacher = teacher.to(self.args.device).eval()
            teacher.requires_grad_(False)
        self.teacher, self.teacher_cache = teacher, teacher_cache
        self.loss_fn = loss_fn if loss_fn is not None else DistillationLoss()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # With num_items_in_batch the loss is normalised over the whole accumulated batch: training_step must not
        # divide it again by the number of accumulation steps.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        loss = distillation_compute_loss(
            model,
            inputs,
            loss_fn=self.loss_fn,
            teacher=self.teacher,
            teacher_cache=self.teacher_cache,
            num_items_in_batch=num_items_in_batch,
        )
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes  # the token count is global; DDP averages the gradients
        return (loss, {"loss": loss}) if return_outputs else loss
