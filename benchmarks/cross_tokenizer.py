"""Benchmark: the cost of cross-tokenizer KD (``kd.loss uld | gold``) per batch, against same-tokenizer KD (``fkl``).

Run from the repository root, alone on the machine (it times and measures memory)::

    .venv/bin/python benchmarks/cross_tokenizer.py --student runs/cross-tokenizer/student [--json out.json]

The teacher is the embedded SmolLM2-135M-Instruct. Same-tokenizer KD: a copy pruned to 24 layers (``fkl``, kdlab's
chunked objective, :class:`kdlab.train.objectives.DistillObjective`); the same student and tokens with ``gold``
(:class:`kdlab.train.objectives.CrossTokenizerObjective` on one tokenizer: the machinery's own cost). Cross-tokenizer
KD: the retokenized 24-layer student of ``scripts/cross_tokenizer_study.py`` (a 650-token vocabulary: its own output
layer is small, the teacher's is not). Batch:
the first ``--batch-size`` problems of the demo's training set (the same text for every path), full fine-tuning.

Per path it reports:

- **prepare ms**: tokenising the batch for the run (the student's encoding; for cross-tokenizer KD also the
  teacher's, the byte offsets, the spans, :func:`kdlab.train.inputs.with_teacher_tokens`) and collating it: the
  alignment cost, paid once per example when the run starts (the bytes of both vocabularies, computed once per run,
  are reported apart as ``vocabulary_bytes_ms``);
- **step s**: the median wall time of one training micro-batch (student forward, teacher forward, objective,
  backward) over ``--repeats`` rounds, paths interleaved, after a warm-up;
- **loss s**: the same for the objective alone (from the models' hidden states, which are computed once);
- **peak extra MiB**: the resident-set high-water mark of one training micro-batch above the loaded models and
  batch, in a fresh child process (the mark reset after a warm-up; glibc's mmap threshold pinned so freed buffers
  return to the kernel; the method of ``benchmarks/kd_loss.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd_loss import _reset_hwm, _status_kib

from kdlab.config import KDConfig
from kdlab.data.formats import load_json_examples
from kdlab.data.token_alignment import token_bytes
from kdlab.data.tokenize import collate, encode_examples
from kdlab.demo import FULL, TEACHER, _prepare_data
from kdlab.losses.chunked import live_teacher_at
from kdlab.models.heads import final_hidden, output_weight, response_hidden
from kdlab.models.load import load_model, load_tokenizer
from kdlab.models.prune import prune_layers
from kdlab.train.inputs import with_teacher_tokens
from kdlab.train.objectives import DistillObjective, kd_spec
from kdlab.train.teacher_signal import cross_objective

#: path -> (kd.loss, student): "same" = SmolLM2 pruned to 24 layers (the teacher's tokenizer), "retok" = the
#: retokenized student. gold-same runs the cross-tokenizer machinery on one tokenizer: its cost against fkl on the
#: same models and tokens is the cost of the alignment and the span losses themselves.
PATHS = {"fkl": ("fkl", "same"), "gold-same": ("gold", "same"), "uld": ("uld", "retok"), "gold": ("gold", "retok")}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", required=True, help="the retokenized student folder")
    parser.add_argument("--data", default="runs/cross-tokenizer", help="folder of the demo's data (written if missing)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--measure", choices=list(PATHS), help=argparse.SUPPRESS)  # child: peak memory of one path
    return parser.parse_args(argv)


class Setup:
    """The teacher, one path's student, its objective and its collated batch."""

    def __init__(self, args, path: str):
        self.teacher, teacher_tok = load_model(TEACHER).eval(), load_tokenizer(TEACHER)
        data = _prepare_data(Path(args.data), FULL, None) / "train.json"
        examples = load_json_examples(data)[: args.batch_size]
        loss, student = PATHS[path]
        kd = KDConfig(loss=loss, kd_weight=1.0, shared_weight=0.5 if loss == "gold" else -1.0)
        if student == "same":
            self.student, self.tokenizer = prune_layers(load_model(TEACHER), 24)[0], teacher_tok
        else:
            self.student, self.tokenizer = load_model(args.student), load_tokenizer(args.student)
        started = time.perf_counter()
        if loss != "fkl":  # once per run (cached per tokenizer): each vocabulary's bytes
            token_bytes(self.tokenizer), token_bytes(teacher_tok)
        self.vocab_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        if loss == "fkl":
            items = encode_examples(teacher_tok, examples, 256)
        else:
            config = argparse.Namespace(
                data=str(data),
                model=args.student,
                teacher=TEACHER,
                train=argparse.Namespace(max_length=256, on_long="truncate"),
            )
            items = encode_examples(self.tokenizer, examples, 256)
            items = with_teacher_tokens(items, examples, self.tokenizer, teacher_tok, config)
        self.batch = collate(items, self.tokenizer.pad_token_id)
        self.prepare_ms = (time.perf_counter() - started) * 1000
        self.student.requires_grad_(True).train()
        self.student.config.use_cache = False
        if loss == "fkl":
            self.objective = DistillObjective(
                kd_spec(kd, args.chunk_size), 0, 0, teacher=self.teacher, vocab_size=len(teacher_tok)
            )
        else:
            inputs = argparse.Namespace(tokenizer=self.tokenizer, teacher_tokenizer=teacher_tok)
            config = argparse.Namespace(kd=kd, train=argparse.Namespace(chunk_size=args.chunk_size))
            self.objective = cross_objective(config, inputs, self.teacher, len(self.tokenizer))
        self.path = loss

    def step(self) -> None:
        self.student.zero_grad(set_to_none=True)
        self.objective(self.student, self.batch, 1).backward()

    def loss_only(self):
        """A callable running the objective alone (forward + backward) from hidden states computed once."""
        b = self.batch
        with torch.no_grad():
            hidden = final_hidden(self.student, b["input_ids"], b["attention_mask"])
        weight = output_weight(self.student)
        if self.path == "fkl":
            from kdlab.losses.chunked import chunked_objective

            h_s, y = response_hidden(hidden, b["labels"])
            with torch.no_grad():
                h_t, _ = response_hidden(final_hidden(self.teacher, b["input_ids"], b["attention_mask"]), b["labels"])
            teacher_at = live_teacher_at(h_t, output_weight(self.teacher), len(self.tokenizer))

            def run():
                h = h_s.detach().requires_grad_(True)
                chunked_objective(h, weight, teacher_at, y, self.objective.spec, len(self.tokenizer)).backward()

            return run
        from kdlab.losses.cross_tokenizer import Side, cross_tokenizer_objective

        h_s, y_s = response_hidden(hidden, b["labels"])
        with torch.no_grad():
            h_t, y_t = response_hidden(
                final_hidden(self.teacher, b["teacher_input_ids"], b["teacher_attention_mask"]), b["teacher_labels"]
            )
        obj = self.objective
        teacher = Side(
            h_t, output_weight(self.teacher)[: obj.teacher_vocab], y_t, b["span_teacher_last"], b["span_teacher_of"]
        )

        def run():
            h = h_s.detach().requires_grad_(True)
            student = Side(h, weight[: obj.student_vocab], y_s, b["span_student_last"], b["span_student_of"])
            cross_tokenizer_objective(obj.spec, student, teacher, b["span_tokens"], obj.shared).backward()

        return run


def measure_child(args) -> dict:
    setup = Setup(args, args.measure)
    setup.step()  # warm-up
    setup.student.zero_grad(set_to_none=True)
    reset = _reset_hwm()
    baseline = _status_kib("VmRSS")
    setup.step()
    return {"peak_extra_mib": (_status_kib("VmHWM") - baseline) / 1024, "hwm_reset": reset}


def measure_in_child(args, path: str) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}
    argv = [
        sys.executable,
        __file__,
        "--student",
        args.student,
        "--data",
        args.data,
        "--batch-size",
        str(args.batch_size),
    ]
    out = subprocess.run(
        [*argv, "--chunk-size", str(args.chunk_size), "--measure", path],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure_child(args)))
        return 0
    setups = {path: Setup(args, path) for path in PATHS}
    runs = {path: (setup.step, setup.loss_only()) for path, setup in setups.items()}
    times = {path: ([], []) for path in PATHS}
    for path in PATHS:  # warm-up
        runs[path][0]()
        runs[path][1]()
    for _ in range(args.repeats):
        for path in PATHS:
            for kind in (0, 1):
                started = time.perf_counter()
                runs[path][kind]()
                times[path][kind].append(time.perf_counter() - started)
    rows = {}
    for path, setup in setups.items():
        b = setup.batch
        rows[path] = {
            "vocabulary_bytes_ms": setup.vocab_ms,
            "prepare_ms": setup.prepare_ms,
            "step_s": statistics.median(times[path][0]),
            "loss_s": statistics.median(times[path][1]),
            "student_response_tokens": int((b["labels"][:, 1:] != -100).sum()),
            "spans": int(b["span_tokens"].numel()) if "span_tokens" in b else None,
            **measure_in_child(args, path),
        }
    print(f"{'path':9} {'prepare ms':>11} {'step s':>8} {'loss s':>8} {'peak MiB':>9} {'tokens':>7} {'spans':>6}")
    for path, row in rows.items():
        print(
            f"{path:9} {row['prepare_ms']:11.1f} {row['step_s']:8.3f} {row['loss_s']:8.3f} {row['peak_extra_mib']:9.0f} "
            f"{row['student_response_tokens']:7d} {row['spans'] or '':>6}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cpu": _cpu(), "rows": rows}, indent=2))
    return 0


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
