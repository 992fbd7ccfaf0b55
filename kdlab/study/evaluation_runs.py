"""The runs that evaluate a study's training runs: test evaluation, and with ``tuning`` validation and selection, and
the student's fidelity to its teacher.

With ``tuning`` in the spec, each student run is trained once per candidate setting (run folders tagged with the
setting, e.g. ``.lr0.0003``), each candidate is scored on the validation split, and the select node's choice is the
run that gets test evaluation and fidelity.
"""

from __future__ import annotations

from dataclasses import replace

from kdlab.study.cost import evaluation_flops, token_kl_flops, validation_flops
from kdlab.study.kinds import KINDS
from kdlab.study.nodes import Node, run_name, study_path
from kdlab.study.runmeta import RunMeta
from kdlab.study.sizes import model_params
from kdlab.study.training_runs import TrainingRuns, make_node


class PlanBuilder(TrainingRuns):
    """Every node of a plan under construction: the training runs, and the runs that evaluate and select them."""

    def evaluation(
        self, run: Node | None, model: str, adapter: str | None, domain, meta: RunMeta, name: str, deps=()
    ) -> Node:
        settings = dict(self.spec.evaluation)
        params = {
            "model": model,
            "adapter": adapter,
            "tasks": list(domain.tasks),
            "data_dir": domain.data_dir,
            **settings,
        }
        flops = evaluation_flops(model_params(self.spec, meta.student), domain, settings)
        run_deps = (run.id,) if run is not None else ()
        group = run.group if run is not None else None
        return self.add(
            make_node(
                "eval",
                name,
                params,
                tuple(deps) + run_deps,
                replace(meta, run=run.id if run else None),
                group=group,
                flops=flops,
            )
        )

    def validation(self, run: Node, model: str, adapter: str | None, domain) -> Node:
        """A candidate run scored on its domain's validation split (all of it: ``evaluation.limit`` is for tests)."""
        split = self.split(domain)
        settings = {**self.spec.evaluation, "limit": None}
        params = {
            "model": model,
            "adapter": adapter,
            "tasks": [split.params["task"]],
            "data_dir": study_path(split.id),
            **settings,
        }
        flops = validation_flops(
            model_params(self.spec, run.meta.student), self.spec.tuning.n, settings["max_new_tokens"]
        )
        return self.add(
            make_node(
                "val-eval",
                run_name(run),
                params,
                (run.id, split.id),
                replace(run.meta, run=run.id),
                group=run.group,
                flops=flops,
            )
        )

    def tuned(self, make, slug: str, s_model: str, domain, temperatures: list) -> Node:
        """The training run a study carries into test evaluation.

        ``make(overrides=..., temperature=...)`` adds a training run. Without tuning: ``make`` with no overrides and
        ``temperatures[0]``. With it: one run per candidate setting and temperature, each scored on the validation
        split, and a select node over them (the carried run).
        """
        tuning = self.spec.tuning
        if tuning is None:
            return make(overrides={}, temperature=temperatures[0])
        candidates = []
        for overrides in tuning.candidates():
            for temperature in temperatures:
                run = make(overrides=overrides, temperature=temperature)
                settings = {**overrides, **({"kd.temperature": temperature} if len(temperatures) > 1 else {})}
                candidates.append((run, self.validation(run, *self.trained(run, s_model), domain), settings))
        first = candidates[0][0]
        meta = first.meta
        if len(temperatures) > 1:
            meta = replace(meta, temperature=None)  # selected per run: see the selection
        params = {
            "candidates": [
                {"run": study_path(run.id), "eval": study_path(val.id), "settings": settings}
                for run, val, settings in candidates
            ],
            "task": candidates[0][1].params["tasks"][0],
            "lora": first.params["flags"].get("lora.enabled", True),
        }
        return self.add(
            make_node(
                "select", f"{KINDS[first.kind].folder}.{slug}", params, tuple(val.id for _, val, _ in candidates), meta
            )
        )

    def temperature_groups(self, temperatures: list) -> list[list]:
        """Temperatures selected together: all at once under ``tuning.temperature: validation``, else one by one."""
        if self.spec.tuning is not None and self.spec.tuning.temperature == "validation" and len(temperatures) > 1:
            return [list(temperatures)]
        return [[temperature] for temperature in temperatures]

    def fidelity(
        self, student_eval: Node, teacher_eval: Node, teacher_load: tuple, student_load: tuple, run: Node
    ) -> Node:
        settings = self.spec.fidelity
        params = {
            "teacher_eval": study_path(teacher_eval.id),
            "student_eval": study_path(student_eval.id),
            "embeddings": bool(settings["embeddings"]),
        }
        flops = 0.0
        if settings["token_kl"]:
            params.update(
                {
                    "teacher_model": teacher_load[0],
                    "teacher_adapter": teacher_load[1],
                    "student_model": student_load[0],
                    "student_adapter": student_load[1],
                }
            )
            flops = token_kl_flops(student_eval.flops)
        return self.add(
            make_node(
                "fidelity",
                run_name(student_eval),
                params,
                (student_eval.id, teacher_eval.id),
                student_eval.meta,
                group=run.group,
                flops=flops,
            )
        )

    def evaluate_student(self, run: Node, s_model: str, domain, teacher_eval: tuple, teacher: str) -> None:
        """Test evaluation of a student run and, with ``fidelity.enabled``, its fidelity to ``teacher_eval``'s
        teacher (``(evaluation, (model, adapter))``)."""
        load = self.trained(run, s_model)
        meta = replace(run.meta, teacher=run.meta.teacher or teacher)
        evaluation = self.evaluation(run, *load, domain, meta, run_name(run))
        if self.spec.fidelity["enabled"]:
            self.fidelity(evaluation, teacher_eval[0], teacher_eval[1], load, run)
