"""What every app shares and that knows no app: errors, owned querysets, paging, routers,
configuration from the environment, page helpers. Imports nothing of accounts, agents,
executions, notifications or aimos."""
