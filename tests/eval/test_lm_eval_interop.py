"""lm-evaluation-harness on kdlab models: a kdlab-trained student folder and a LoRA teacher (HFLM ``peft=``), scored
on a local multiple-choice task, choose the same options as ``kdlab eval --mode loglik`` on the same examples.

lm-eval moves the prompt's trailing newline onto the continuation (``_encode_pair``), so its log-likelihood of an
option carries one more term than kdlab's, ``log p("\\n" | prompt without it)``, the same for every option: the
choices and the differences between options agree, the raw values do not.
"""

import json

import pytest
from kdlab_testing import run_cli, small_data

from kdlab.data.formats import load_examples
from kdlab.data.prompt import format_prompt
from kdlab.eval.options import parse_options
from kdlab.eval.tasks import TASKS

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'kdlab[interop]')")

PIQA = [  # LLM-Adapters piqa format: two solutions, the answer is solution1 or solution2
    ("How do I keep bread fresh?", "Store it in a sealed bag.", "Leave it in the sun.", "solution1"),
    ("How to cool down soup quickly?", "Heat it on the stove.", "Stir it over a bowl of ice water.", "solution2"),
    ("How can I dry wet shoes?", "Stuff them with newspaper.", "Fill them with water.", "solution1"),
    ("How to sharpen a pencil?", "Use a pencil sharpener.", "Use a spoon.", "solution1"),
    (
        "How do you open a jar with a tight lid?",
        "Freeze the jar for a day.",
        "Run the lid under hot water.",
        "solution2",
    ),
    ("How to find a lost key?", "Retrace your steps.", "Buy a new door 12 + 5 = 17.", "solution1"),
]


def write_piqa(data_dir):
    items = [
        {
            "instruction": f"Please choose the correct solution to the question: {goal}\n\nSolution1: {one}\n\nSolution2: {two}"
            "\n\nAnswer format: solution1/solution2",
            "input": "",
            "output": f"the correct answer is {answer}",
            "answer": answer,
        }
        for goal, one, two, answer in PIQA
    ]
    path = data_dir / TASKS["piqa"].folder / "test.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(items))
    return path


def write_lm_eval_task(task_dir, test_file):
    """The same examples as an lm-eval multiple-choice task: the kdlab prompt as context, the parsed options as
    choices, no delimiter between them (kdlab scores the option text right after the prompt)."""
    task = TASKS["piqa"]
    rows = []
    for example in load_examples(test_file):
        options = parse_options(task, example.instruction)
        labels = list(options)
        rows.append(
            {
                "prompt": format_prompt(example.instruction, example.input),
                "choices": [options[label] for label in labels],
                "labels": labels,
                "gold": labels.index(example.answer),
            }
        )
    data = task_dir / "piqa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (task_dir / "kdlab_piqa_local.yaml").write_text(
        "\n".join(
            [
                "task: kdlab_piqa_local",
                "dataset_path: json",
                "dataset_kwargs:",
                f"  data_files: {{test: {json.dumps(str(data))}}}",
                f"  cache_dir: {json.dumps(str(task_dir / 'hf-cache'))}",
                "test_split: test",
                "output_type: multiple_choice",
                "doc_to_text: prompt",
                "doc_to_choice: choices",
                "doc_to_target: gold",
                'target_delimiter: ""',
                "metric_list:",
                "  - metric: acc",
                "",
            ]
        )
    )
    return rows


def lm_eval_loglikelihoods(task_dir, **model_args) -> list[list[float]]:
    """Per example (in file order), the log-likelihood lm-eval gives each choice."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = HFLM(device="cpu", batch_size=4, dtype="float32", **model_args)
    results = simple_evaluate(
        model=model,
        tasks=["kdlab_piqa_local"],
        task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True,
        num_fewshot=0,
    )
    samples = sorted(results["samples"]["kdlab_piqa_local"], key=lambda sample: sample["doc_id"])
    return [[float(resp[0]) for resp in sample["filtered_resps"]] for sample in samples]


def kdlab_scores(out_dir, labels_per_row) -> list[list[float]]:
    lines = sorted(
        (json.loads(line) for line in (out_dir / "predictions" / "piqa.jsonl").read_text().splitlines()),
        key=lambda line: line["id"],
    )
    return [[line["scores"][label] for label in labels] for line, labels in zip(lines, labels_per_row)]


def argmax(values):
    return max(range(len(values)), key=values.__getitem__)


@pytest.fixture(scope="module")
def trained(tiny_models, synth_train, tmp_path_factory):
    """A kdlab SFT student folder (full fine-tuning) and a LoRA adapter on a second base model, 2 steps each."""
    root = tmp_path_factory.mktemp("lm-eval-models")
    data = small_data(root / "four.json", synth_train, 4)
    fast = {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "precision": "fp32", "save_steps": "0"}
    assert run_cli("sft", model=tiny_models["student"], data=data, out=root / "student", no_lora=True, **fast) == 0
    # the LoRA base has no padded output rows: lm-eval resizes the embeddings to len(tokenizer) when it loads an
    # adapter (see docs/ecosystem.md), which would renormalise a padded head's log-probabilities
    assert run_cli("sft", model=tiny_models["talker"], data=data, out=root / "teacher-lora", lora_r=4, **fast) == 0
    return {
        "student": root / "student" / "final",
        "base": tiny_models["talker"],
        "adapter": root / "teacher-lora" / "final",
    }


@pytest.mark.parametrize("which", ["student", "lora_teacher"])
def test_lm_eval_chooses_as_kdlab_eval_loglik(trained, tmp_path, which):
    data_dir, task_dir = tmp_path / "data", tmp_path / "tasks"
    task_dir.mkdir()
    rows = write_lm_eval_task(task_dir, write_piqa(data_dir))
    if which == "student":
        kdlab_model, model_args = {"model": trained["student"]}, {"pretrained": str(trained["student"])}
    else:
        kdlab_model = {"model": trained["base"], "adapter": trained["adapter"]}
        model_args = {"pretrained": str(trained["base"]), "peft": str(trained["adapter"])}
    status = run_cli(
        "eval",
        **kdlab_model,
        tasks="piqa",
        data_dir=data_dir,
        mode="loglik",
        out=tmp_path / "eval",
        batch_size=4,
        precision="fp32",  # auto would be bf16 on a CPU with native bf16
    )
    assert status == 0
    ours = kdlab_scores(tmp_path / "eval", [row["labels"] for row in rows])
    theirs = lm_eval_loglikelihoods(task_dir, **model_args)
    assert len(theirs) == len(ours) == len(PIQA)
    assert [argmax(scores) for scores in theirs] == [argmax(scores) for scores in ours]
    for a, b in zip(ours, theirs):  # one extra term, the same for every option: the differences agree
        assert b[1] - b[0] == pytest.approx(a[1] - a[0], abs=1e-4)
        assert b[0] - a[0] < 0  # the extra term is a log-probability
