from infocut.cli import app

app()
