"""`stepflash bench`: a serving benchmark for any OpenAI-compatible chat endpoint."""
