# IPython kernel configuration for cellblock's python image.
# Loaded from $IPYTHONDIR/profile_default; the broker sets IPYTHONDIR to the image.
c = get_config()  # noqa: F821

# Figures: the inline backend (the broker also sets MPLBACKEND to it), so both
# plt.show() and a figure left open at the end of a cell yield image/png.
c.InlineBackend.figure_formats = {"png"}
c.InlineBackend.close_figures = True

# No history database: the image directory is shared and read-only in use.
c.HistoryManager.enabled = False

# Plain tracebacks without terminal colours: they are read by agents, not terminals.
c.InteractiveShell.colors = "nocolor"
c.InteractiveShell.xmode = "Context"

# Last-expression display like a notebook.
c.InteractiveShell.ast_node_interactivity = "last_expr"
