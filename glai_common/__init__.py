"""What the API and the worker share: settings, the database schema and sessions, the job state
machine and artifact storage. Neither ``api`` nor ``worker`` imports the other; both import this."""
