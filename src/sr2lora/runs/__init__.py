"""The run folder: its file names (:mod:`.folder`), the atomic checkpoint (:mod:`.checkpoint`), reading what it holds
(:mod:`.saved`), the one-process lock (:mod:`.lock`) and when a folder may be reused (:mod:`.reuse`)."""
