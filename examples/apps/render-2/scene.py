"""Version 2 of an example app (README.md, docs/apps.md): the code ships as a zip."""


def draw(frame: int, quality: str = "low") -> str:
    return f"frame {frame} drawn at {quality} quality by v2"
