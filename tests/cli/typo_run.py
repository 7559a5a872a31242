"""``python typo_run.py``: an App with a typo in a keyword, run the way the README shows."""

from cli.targets import hello
from quiesce import App
from quiesce.servers.asgi import HTTPServer

app = App(name="typo", drain_dealy=1, servers=[HTTPServer(hello(b"typo"), port=0)])  # type: ignore[call-arg]  # the typo under test

if __name__ == "__main__":
    app.run()
