from stepflash.cli import app

app()
