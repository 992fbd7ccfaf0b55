"""Studies: a whole KD grid from one YAML spec — plan, run (local, Ray, SLURM), results, statistics, report."""
