"""Using a finished run: one model over every learned class (:mod:`.load`), top-k predictions for image files
(:mod:`.predict`) and a plain timm model (:mod:`.export`)."""
