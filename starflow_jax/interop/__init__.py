"""Import and export of parameters from and to other frameworks."""
