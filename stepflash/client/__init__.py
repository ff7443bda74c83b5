"""Clients of a running stepflash server."""
