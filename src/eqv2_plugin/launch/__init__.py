"""Running fairchem on Slurm: ``eqv2-plugin submit`` (submitit, GPU or CPU nodes, requeue and
exact resume) and ``eqv2-plugin merge-relaxations`` (sharded relaxations). See ``slurm/`` for
sbatch templates."""
