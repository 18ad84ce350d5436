"""Names shared by ``tvmq.passes`` and ``tvmq.schedules`` (which never import each other)."""
