"""What is built on the model code: the `vtc` command line (`cli`), its demo, training, conversion and benchmarks,
Hub publishing, and tiny models for tests and experiments. Nothing under `configuration`, `modeling` or `processing`
imports from here (checked by `make lint`)."""
