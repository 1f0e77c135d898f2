"""The `recon3d` command line: main.py builds the parser from the verb tables of data_verbs, train_verbs and
shapes, with the option groups of options.py."""
