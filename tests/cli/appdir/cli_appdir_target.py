"""Found only through ``--app-dir``: this folder is on no other path."""

from cli.targets import hello

app = hello(b"from app-dir")
