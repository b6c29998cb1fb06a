"""Measuring finished runs without training: drift of old tasks (:mod:`.drift`), drift against margin
(:mod:`.drift_margin`), the robustness of the alignment losses (:mod:`.robustness`), statistics, and a run
brought back with its data (:mod:`.restore`)."""
