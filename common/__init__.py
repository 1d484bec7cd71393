"""What server and client share: tasks, models, data, privacy, serialisation.

`common` never imports `server` or `client`.
"""
