"""The ``gradaccum`` command line."""
