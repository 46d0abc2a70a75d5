"""The results pipeline's parts: the EM and circuit baselines and the verdict in plain words.
Sits on top of everything else."""
