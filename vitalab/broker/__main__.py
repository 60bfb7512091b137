from vitalab.broker.cli import app

app(prog_name="python -m vitalab.broker")
