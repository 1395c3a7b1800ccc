"""The error of a bad model argument (`--model_args`), kept apart from lm-eval so that the
command line can report it in one line without importing lm-eval."""


class ModelArgError(ValueError):
    """A model argument that is missing or out of range: one line naming it and what is allowed."""
