"""The names of the server-sent events the portal sends, in one place.

The streams send them, templates listen for them (the jinja global `sse`), tests look for them.
"""

END = "end"  # the last event of a job's stream, after its terminal status (htmx: sse-close)
JOB_PANEL = "job-panel"  # a job page's panel, rendered again
JOB_LIST = "job-list"  # a job list's rows, all of them (when its stream connects)
JOB_ROW = "job-row"  # one row of a job list: a job that changed or is new
