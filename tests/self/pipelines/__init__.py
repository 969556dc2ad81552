"""The drivers (fv/pipelines/): ``fv relation`` and ``fv universal`` end to end, their resume and trials-file rules,
one writer per output folder (locks), the cluster settings and real Slurm job arrays."""
