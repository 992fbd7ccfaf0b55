"""Distribution fidelity: teacher-forced token KL in both directions and top-1 agreement of two models."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdlab.errors import KdlabError
from kdlab.fidelity_metrics.folders import example_order, read_eval_folder

DISTRIBUTION_METRICS = ("kl_teacher_student", "kl_student_teacher", "top1_agreement")


def _encode_teacher_outputs(tokenizer, records: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) as training encodes them: prompt with special tokens, output without, plus EOS."""
    encoded = []
    for record in records:
        prompt = tokenizer(record["prompt"], add_special_tokens=True)["input_ids"]
        response = tokenizer(str(record["output"] or "").strip(), add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        encoded.append((prompt, response))
    return encoded


@torch.no_grad()
def _task_distribution(teacher, student, encoded, pad_id: int, vocab: int, batch_size: int, chunk_size: int) -> dict:
    from kdlab.losses import TOKEN_DIVERGENCES
    from kdlab.models.heads import final_hidden, output_weight

    t_weight, s_weight = output_weight(teacher)[:vocab], output_weight(student)[:vocab]
    t_device, s_device = t_weight.device, s_weight.device
    fkl_sum = rkl_sum = 0.0
    top1 = tokens = 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    for start in range(0, len(order), batch_size):
        items = [encoded[i] for i in order[start : start + batch_size]]
        length = max(len(p) + len(r) for p, r in items)
        input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        response = torch.zeros_like(input_ids, dtype=torch.bool)
        for row, (prompt, resp) in enumerate(items):
            input_ids[row, : len(prompt) + len(resp)] = torch.tensor(prompt + resp)
            attention_mask[row, : len(prompt) + len(resp)] = 1
            response[row, len(prompt) : len(prompt) + len(resp)] = True
        keep = response[:, 1:]  # hidden state t predicts token t + 1
        t_hidden = final_hidden(teacher, input_ids.to(t_device), attention_mask.to(t_device))[:, :-1][keep.to(t_device)]
        s_hidden = final_hidden(student, input_ids.to(s_device), attention_mask.to(s_device))[:, :-1][keep.to(s_device)]
        for c in range(0, t_hidden.shape[0], chunk_size):
            t_logits = F.linear(t_hidden[c : c + chunk_size], t_weight).float()
            s_logits = F.linear(s_hidden[c : c + chunk_size], s_weight).float().to(t_logits.device)
            fkl_sum += float(TOKEN_DIVERGENCES["fkl"](s_logits, t_logits, 1.0).double().sum())
            rkl_sum += float(TOKEN_DIVERGENCES["rkl"](s_logits, t_logits, 1.0).double().sum())
            top1 += (t_logits.argmax(-1) == s_logits.argmax(-1)).sum().item()
        tokens += int(keep.sum())
    return {
        "kl_teacher_student": fkl_sum / tokens if tokens else None,
        "kl_student_teacher": rkl_sum / tokens if tokens else None,
        "top1_agreement": top1 / tokens if tokens else None,
        "tokens": tokens,
    }


def distribution_fidelity(
    teacher_model,
    student_model,
    teacher_dir,
    teacher_adapter=None,
    student_adapter=None,
    batch_size: int = 8,
    limit: int | None = None,
    chunk_size: int = 256,
) -> dict:
    """Teacher-forced token distributions of both models on the teacher's generated outputs, per task.

    For each example of the teacher's (generate) evaluation folder, the sequence is prompt + teacher output + EOS,
    tokenised as in training; at every response position (the positions that predict the response tokens):
    ``kl_teacher_student`` = KL(p_T || p_S) (``TOKEN_DIVERGENCES["fkl"]``), ``kl_student_teacher`` = KL(p_S || p_T)
    (``["rkl"]``), both at temperature 1, and ``top1_agreement`` = argmax p_T == argmax p_S. Each is the
    token-weighted mean over the task's ``tokens`` response tokens. Logits come from final hidden states and the
    lm_head weights, both sliced to the shared vocabulary (min of the two output layers and the tokenizer size),
    ``chunk_size`` tokens at a time. ``limit``: the first ``limit`` examples (by id) of each task.

    Returns ``{task: {"kl_teacher_student", "kl_student_teacher", "top1_agreement", "tokens"}}``.
    """
    from kdlab.models.load import check_same_tokenizer, inference_device, load_model, load_tokenizer

    for name, value in (("batch_size", batch_size), ("limit", limit), ("chunk_size", chunk_size)):
        if value is not None and value <= 0:
            raise KdlabError(f"{name} must be > 0, got {value}")
    folder = read_eval_folder(teacher_dir)
    if folder["mode"] != "generate":
        raise KdlabError(
            f"{teacher_dir}: distribution fidelity needs a generate evaluation of the teacher (its outputs); this one is {folder['mode']}"
        )
    tokenizer = load_tokenizer(str(teacher_model))
    tokenizer_size = check_same_tokenizer(
        tokenizer, load_tokenizer(str(student_model)), str(teacher_model), str(student_model)
    )
    device = inference_device()
    teacher = load_model(str(teacher_model), adapter=teacher_adapter, merge_adapter=True).eval().to(device)
    student = load_model(str(student_model), adapter=student_adapter, merge_adapter=True).eval().to(device)
    from kdlab.models.heads import output_weight

    vocab = min(output_weight(teacher).shape[0], output_weight(student).shape[0], tokenizer_size, len(tokenizer))
    results = {}
    for task, records in sorted(folder["tasks"].items()):
        chosen = [records[i] for i in sorted(records, key=example_order)][:limit]
        encoded = _encode_teacher_outputs(tokenizer, chosen)
        results[task] = _task_distribution(
            teacher, student, encoded, tokenizer.pad_token_id, vocab, batch_size, chunk_size
        )
    return results
