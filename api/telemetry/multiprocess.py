"""Where prometheus_client's multiprocess mode keeps each worker's figures.

The variable must be set before prometheus_client is first imported in a process, and the server's
workers are forked from the process that starts them: `todo-api serve` sets it before it imports
anything that imports prometheus_client.
"""

DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
