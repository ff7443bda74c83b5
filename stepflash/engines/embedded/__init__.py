"""stepflash."""
