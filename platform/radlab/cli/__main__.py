from radlab.cli import app

app()
