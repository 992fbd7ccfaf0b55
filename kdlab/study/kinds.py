"""The kinds of run in a study plan, in dependency order, and the study sub-folder each kind writes to.

Runs ("nodes") and their folders under the study folder, in dependency order::

    models/<student>-<h>                   prune: a student cut from a loadable model
    data/<domain>-<h>                      with tuning: train.json (training minus validation) and the validation split
    teacher/<teacher>.<domain>-<h>         teacher SFT on the domain's training data
    answers/<teacher>.<domain>[.base]-<h>  SeqKD data: the teacher's greedy answers to the training prompts
    cache/<teacher>.<domain>[.base]-<h>    teacher signal cache (top-k log-probs), shared by every KD run using it
    sft/<student>.<domain>.s<seed>-<h>     student SFT baseline
    kd/<teacher>.<student>.<domain>.<method>[.t<tau>][.noise<sigma>][.base].s<seed>-<h>   one KD run
    val/<run folder name>-<h>              with tuning: a candidate run scored on the validation split
    select/<run name>-<h>                  with tuning: the best candidate by validation accuracy (``selected`` links to it)
    eval/<run folder name>-<h>             evaluation of a teacher, base teacher, SFT or KD run on the domain's tasks
    fidelity/<run folder name>-<h>         the student's fidelity to the teacher it learned from (or the teacher, for SFT)
"""

KIND_DIRS = {
    "prune": "models",
    "split": "data",
    "teacher-sft": "teacher",
    "answers": "answers",
    "cache": "cache",
    "student-sft": "sft",
    "kd": "kd",
    "val-eval": "val",
    "select": "select",
    "eval": "eval",
    "fidelity": "fidelity",
}
KIND_ORDER = tuple(KIND_DIRS)
