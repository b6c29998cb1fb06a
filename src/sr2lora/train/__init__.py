"""Training one run: the task loop (:mod:`.engine`), one optimisation step (:mod:`.step`), optimisers and schedules,
the loggers (:mod:`.callbacks`), evaluation, metrics and the checks before any work (:mod:`.preflight`)."""
