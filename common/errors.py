"""The project's own error types: every refusal a user sees is one of these."""


class FedwardError(Exception):
    """Base class: a message that names the input and says what to do."""


class ConfigError(FedwardError):
    """A run or node setting is unknown, of the wrong type, or impossible."""


class DataError(FedwardError):
    """A data path, file or record cannot be used for training."""
