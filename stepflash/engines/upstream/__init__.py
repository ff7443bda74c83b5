"""Engines that forward to another server: OpenAI-compatible chat or raw completions."""
