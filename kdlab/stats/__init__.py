"""Statistics: the tidy results table of a study, the tests and intervals, and their tables as text.

Read in this order:

- :mod:`~kdlab.stats.significance`: the tests and intervals (Wilson, Student-t, paired bootstrap, McNemar, Holm,
  the t-test / ANOVA / Spearman rows), written once;
- :mod:`~kdlab.stats.formatting`: numbers and tables as text (NaN-safe), for every table kdlab writes;
- :mod:`~kdlab.stats.results` and :mod:`~kdlab.stats.table`: a study's results table (one row per run x task) and
  its checked schema;
- :mod:`~kdlab.stats.hypotheses`: the paper's H1-H5 tests, one core for a study (:mod:`~kdlab.stats.study`) and
  for the paper's published CSVs (:mod:`~kdlab.stats.paper`);
- :mod:`~kdlab.stats.paired`: paired per-example tests (McNemar, bootstrap, Holm) and the reader of per-example
  files, used for accuracy (KD vs SFT) and for agreement with the teacher (:mod:`~kdlab.stats.fidelity`);
- :mod:`~kdlab.stats.study`: every statistics table of a study, written by ``kdlab study stats``
  (``stats.md``: :mod:`~kdlab.stats.markdown`).

The study report (:mod:`kdlab.study.report`) draws and words these tables.
"""
