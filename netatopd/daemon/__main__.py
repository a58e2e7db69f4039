"""``python -m netatopd.daemon``: the same as the ``netatopd`` command."""

from .main import main

if __name__ == "__main__":
    main()
