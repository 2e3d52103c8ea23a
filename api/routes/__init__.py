"""HTTP routes, one module per resource. Each handler validates, calls a service, returns a schema."""
