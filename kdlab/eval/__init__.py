"""Evaluation: the task registry (:mod:`kdlab.eval.tasks`) and answer extraction (:mod:`kdlab.eval.extract`).

Import from the submodules (``from kdlab.eval.extract import extract``); the package re-exports nothing, so that
``kdlab.eval.extract`` always names the module, never the function.
"""
