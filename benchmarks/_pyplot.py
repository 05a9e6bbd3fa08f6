"""Matplotlib for the plot scripts: an optional dependency (the extra "plots")."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a clear exit naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the plots need matplotlib, which horovod-scalecom does not require: "
                         "pip install 'horovod-scalecom[plots]' (or pip install matplotlib); "
                         "the tables above need nothing more") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
