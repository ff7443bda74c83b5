"""The gate between a decoded request and the engine: who is asking (keys), what their tier
allows (limits), and whether their balance covers the request (holds), then settlement."""
