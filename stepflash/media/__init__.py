"""Images and videos: SSRF-safe fetching, format checks, and what they cost in tokens."""
