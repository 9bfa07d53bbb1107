"""One module per command (`run` and `defend` share one); app.py wires them."""
