"""Sphinx hook: re-read the status page on every build, after the notebooks (it reads their execution cache)."""

STATUS = "chapters/status"


def _always_outdated(app, env, added, changed, removed):
    return [STATUS] if STATUS in env.found_docs else []


def setup(app):
    app.connect("env-get-outdated", _always_outdated)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
