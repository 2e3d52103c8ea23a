"""Small service functions the routes call: one module per domain, no HTTP objects beyond ApiError."""
