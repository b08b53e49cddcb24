"""The bodies of the command-line scripts: flags -> config -> library calls, printing and files.
Each of generate / train / infer has a `main(argv)`; the top-level scripts only call it."""
