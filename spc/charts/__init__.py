"""Control charts: each module estimates Phase I parameters and builds plotted series."""
