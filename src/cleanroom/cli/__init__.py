"""The ``cleanroom`` command line: thin commands over the client and the libraries."""
