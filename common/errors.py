"""The project's own error types: every refusal a user sees is one of these."""


class FedwardError(Exception):
    """Base class: a message that names the input and says what to do."""


class ConfigError(FedwardError):
    """A run or node setting is unknown, of the wrong type, or impossible."""


class DataError(FedwardError):
    """A data path, file or record cannot be used for training.

    The message names the file and may quote the bad row: it stays at the hospital.
    `public` is what may leave it (a category and counts, no values, no paths);
    empty means only "the data could not be used".
    """

    def __init__(self, message: str, public: str = "") -> None:
        super().__init__(message)
        self.public = public


class ModelMismatch(FedwardError):
    """Received weights do not fit the task's model. The text names only layer keys and shapes,
    which the sender already knows, so a hospital may send it back as is."""
