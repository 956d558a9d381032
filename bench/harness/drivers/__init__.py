"""Python drivers: one process per system, commanded with JSON lines on stdin (see ``channel``)."""
